// A local IPFS node for fsmount's tests and demo, on Helia with no network but its own HTTP port.
//
// node scripts/ipfs_gateway.mjs --port PORT --repo DIR --add SOURCE_DIR [importer options] [--tamper CID]
//
// Adds SOURCE_DIR (files, directories, symlinks, times) to a filesystem blockstore under DIR, prints
// its root CID on stdout, and serves on 127.0.0.1:PORT:
//   GET|HEAD /ipfs/CID[/PATH]          the path gateway (Range), and trustless ?format=raw|car responses,
//                                      through @helia/verified-fetch
//   POST /api/v0/block/get?arg=CID     a raw block, as Kubo's RPC API
//   POST /api/v0/ls?arg=CID[/PATH]     a directory's links, as Kubo's
//   POST /api/v0/cat?arg=CID[/PATH]&offset=&length=
//   POST /api/v0/add?cid-version=&raw-leaves=&wrap-with-directory=   Kubo's: a multipart/form-data body of
//                                      files, directories and symlinks (with mtimes), read as it arrives;
//                                      an NDJSON line {Name, Hash, Size} for each entry added
// Every request is logged on stdout, one line each. --tamper CID: raw responses of that block come
// with one byte changed (the tests' check that a client verifies what it gets).
// Importer options: --cid-version 0|1, --raw-leaves true|false, --chunk-size BYTES,
// --max-children N (links per file node), --shard-split-threshold BYTES (a larger directory is a HAMT).

if (!Promise.withResolvers) {  // Node 20 has none; Helia's libraries expect it
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new Promise((yes, no) => { resolve = yes; reject = no })
    return { promise, resolve, reject }
  }
}

const { parseArgs } = await import('node:util')
const fs = await import('node:fs')
const http = await import('node:http')
const path = await import('node:path')
const { Readable } = await import('node:stream')
const { createHeliaLight } = await import('helia')
const { unixfs } = await import('@helia/unixfs')
const { createVerifiedFetchWithHelia } = await import('@helia/verified-fetch')
const { FsBlockstore } = await import('blockstore-fs')
const { balanced } = await import('ipfs-unixfs-importer/layout')
const { fixedSize } = await import('ipfs-unixfs-importer/chunker')
const { CID } = await import('multiformats/cid')

const { values: options } = parseArgs({
  options: {
    port: { type: 'string' },
    repo: { type: 'string' },
    add: { type: 'string' },
    tamper: { type: 'string' },
    'cid-version': { type: 'string', default: '1' },
    'raw-leaves': { type: 'string', default: 'true' },
    'chunk-size': { type: 'string', default: '262144' },
    'max-children': { type: 'string', default: '174' },
    'shard-split-threshold': { type: 'string', default: '262144' }
  }
})

const blockstore = new FsBlockstore(path.join(options.repo, 'blocks'))
await blockstore.open()
const helia = createHeliaLight({ blockstore, routers: [], blockBrokers: [] })
await helia.start()
const files = unixfs(helia)

// Times are kept only with raw leaves: ipfs-unixfs-importer 17 writes a one-chunk file of DAG-PB leaves that
// has an mtime with the leaf's encoded node as its bytes.
const keepMtimes = options['raw-leaves'] === 'true'

function * entries (root, relative = '') {
  for (const name of fs.readdirSync(path.join(root, relative)).sort()) {
    const entryPath = path.join(relative, name)
    const full = path.join(root, entryPath)
    const stat = fs.lstatSync(full)
    const entry = { path: entryPath, mtime: keepMtimes ? { secs: BigInt(Math.floor(stat.mtimeMs / 1000)) } : undefined }
    if (stat.isSymbolicLink()) {
      yield { ...entry, link: fs.readlinkSync(full) }
    } else if (stat.isDirectory()) {
      yield entry
      yield * entries(root, entryPath)
    } else {
      yield { ...entry, content: fs.createReadStream(full) }
    }
  }
}

const importOptions = {
  cidVersion: Number(options['cid-version']),
  rawLeaves: options['raw-leaves'] === 'true',
  chunker: fixedSize({ chunkSize: Number(options['chunk-size']) }),
  layout: balanced({ maxChildrenPerNode: Number(options['max-children']) }),
  shardSplitThresholdBytes: Number(options['shard-split-threshold'])
}

let root
for await (const added of files.addAll(entries(options.add), { ...importOptions, wrapWithDirectory: true })) {
  root = added.cid
}
if (root === undefined) {  // an empty directory
  root = await files.addDirectory({}, { cidVersion: Number(options['cid-version']) })
}
const verifiedFetch = await createVerifiedFetchWithHelia(helia)

function tampered (body) {
  const bytes = new Uint8Array(body)
  bytes[0] ^= 0xff
  return bytes
}

async function gateway (request, response, url) {
  const headers = new Headers()
  for (const name of ['accept', 'range']) {
    if (request.headers[name] !== undefined) headers.set(name, request.headers[name])
  }
  const answer = await verifiedFetch(`ipfs://${url.pathname.slice('/ipfs/'.length)}${url.search}`,
    { method: request.method, headers, session: false })
  let body = request.method === 'HEAD' || answer.body == null ? null : answer.body
  if (options.tamper && url.pathname === `/ipfs/${options.tamper}` && answer.status === 200 &&
      (answer.headers.get('content-type') ?? '').includes('application/vnd.ipld.raw')) {
    body = tampered(await answer.arrayBuffer())
  }
  response.writeHead(answer.status, Object.fromEntries(answer.headers))
  if (body === null) {
    response.end()
  } else if (body instanceof Uint8Array) {
    response.end(body)
  } else {
    Readable.fromWeb(body).pipe(response)
  }
}

function argument (url) {
  const [cid, ...rest] = (url.searchParams.get('arg') ?? '').replace(/^\/ipfs\//, '').split('/')
  return { cid: CID.parse(cid), path: rest.join('/') }
}

// The parts of a multipart/form-data body, as it arrives: { headers (names in lower case), content (an async
// iterable of the part's bytes, to be read before the next part is asked for) }.
async function * formParts (stream, boundary) {
  const delimiter = Buffer.from(`\r\n--${boundary}`)
  const chunks = stream[Symbol.asyncIterator]()
  let buffer = Buffer.from('\r\n')  // the first delimiter has no CRLF of its own before it
  const more = async () => {
    const { value, done } = await chunks.next()
    if (done) throw new Error('the form ended early')
    buffer = Buffer.concat([buffer, value])
  }
  let at
  while ((at = buffer.indexOf(delimiter)) < 0) await more()
  buffer = buffer.subarray(at + delimiter.length)
  while (true) {
    while (buffer.length < 2) await more()
    if (buffer.subarray(0, 2).toString() === '--') return
    while ((at = buffer.indexOf('\r\n\r\n')) < 0) await more()
    const headers = Object.fromEntries(buffer.subarray(2, at).toString().split('\r\n').map(line => {
      const colon = line.indexOf(':')
      return [line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim()]
    }))
    buffer = buffer.subarray(at + 4)
    yield { headers, content: partContent() }
  }

  async function * partContent () {
    while (true) {
      const end = buffer.indexOf(delimiter)
      if (end >= 0) {
        const piece = buffer.subarray(0, end)
        buffer = buffer.subarray(end + delimiter.length)
        if (piece.length > 0) yield piece
        return
      }
      const safe = buffer.length - delimiter.length + 1  // what cannot be the start of a delimiter
      if (safe > 0) {
        const piece = buffer.subarray(0, safe)
        buffer = buffer.subarray(safe)
        yield piece
      }
      await more()
    }
  }
}

// Kubo's form: each part's filename is its URL-escaped path; its name may carry ?mtime=&mtime-nsecs=.
async function * formEntries (parts) {
  for await (const { headers, content } of parts) {
    const disposition = headers['content-disposition'] ?? ''
    const name = /\bname="([^"]*)"/.exec(disposition)?.[1] ?? ''
    const path = decodeURIComponent((/\bfilename="([^"]*)"/.exec(disposition)?.[1] ?? '').replaceAll('+', ' '))
    const query = new URLSearchParams(name.split('?')[1] ?? '')
    const mtime = query.has('mtime')
      ? { secs: BigInt(query.get('mtime')), nsecs: Number(query.get('mtime-nsecs') ?? 0) }
      : undefined
    const type = headers['content-type'] ?? 'application/octet-stream'
    if (type === 'application/x-directory') {
      for await (const _ of content); // eslint-disable-line no-unused-vars
      yield { path, mtime }
    } else if (type === 'application/symlink') {
      const target = []
      for await (const piece of content) target.push(piece)
      yield { path, mtime, link: Buffer.concat(target).toString() }
    } else {
      yield { path, mtime, content }
    }
  }
}

async function add (request, response, url) {
  const boundary = /boundary="?([^";]+)"?/.exec(request.headers['content-type'] ?? '')?.[1]
  if (boundary === undefined) throw new Error('expected a multipart/form-data body')
  const flag = (name, otherwise) => url.searchParams.has(name) ? url.searchParams.get(name) === 'true' : otherwise
  response.writeHead(200, { 'content-type': 'application/x-ndjson' })
  for await (const added of files.addAll(formEntries(formParts(request, boundary)), {
    ...importOptions,
    cidVersion: Number(url.searchParams.get('cid-version') ?? importOptions.cidVersion),
    rawLeaves: flag('raw-leaves', importOptions.rawLeaves),
    wrapWithDirectory: flag('wrap-with-directory', false),
    fileImportConcurrency: 1  // the parts arrive one after the other: each file is read before the next begins
  })) {
    response.write(JSON.stringify({ Name: added.path ?? '', Hash: added.cid.toString(), Size: String(added.size) }) + '\n')
  }
  response.end()
}

const UNIXFS_TYPES = { directory: 1, 'hamt-sharded-directory': 1, file: 2, raw: 2, symlink: 4 }

async function rpc (request, response, url) {
  const command = url.pathname.slice('/api/v0/'.length)
  if (command === 'add') return await add(request, response, url)
  const { cid, path: inner } = argument(url)
  if (command === 'block/get') {
    const chunks = []
    for await (const chunk of helia.blockstore.get(cid, { offline: true })) chunks.push(chunk)
    const block = Buffer.concat(chunks)
    response.writeHead(200, { 'content-type': 'application/octet-stream' })
    response.end(options.tamper === cid.toString() ? tampered(block) : block)
  } else if (command === 'ls') {
    const links = []
    for await (const entry of files.ls(cid, { path: inner, offline: true })) {
      const stat = await files.stat(entry.cid, { offline: true })
      const type = stat.unixfs?.type ?? stat.type
      const target = type === 'symlink' ? new TextDecoder().decode(stat.unixfs.data) : ''
      links.push({ Name: entry.name, Hash: entry.cid.toString(), Size: Number(type.includes('directory') ? 0 : stat.size), Type: UNIXFS_TYPES[type] ?? 0, Target: target })
    }
    response.writeHead(200, { 'content-type': 'application/json' })
    response.end(JSON.stringify({ Objects: [{ Hash: url.searchParams.get('arg'), Links: links }] }))
  } else if (command === 'cat') {
    const offset = url.searchParams.get('offset')
    const length = url.searchParams.get('length')
    response.writeHead(200, { 'content-type': 'application/octet-stream' })
    Readable.from(files.cat(cid, {
      path: inner, offline: true, offset: offset === null ? undefined : Number(offset), length: length === null ? undefined : Number(length)
    })).pipe(response)
  } else {
    response.writeHead(404, { 'content-type': 'application/json' })
    response.end(JSON.stringify({ Message: `unknown command ${command}`, Code: 0, Type: 'error' }))
  }
}

const server = http.createServer(async (request, response) => {
  const url = new URL(request.url, 'http://127.0.0.1')
  console.log(`${request.method} ${request.url} ${request.headers.accept ?? ''} ${request.headers.range ?? ''}`)
  try {
    if (url.pathname.startsWith('/ipfs/')) {
      await gateway(request, response, url)
    } else if (url.pathname.startsWith('/api/v0/') && request.method === 'POST') {
      await rpc(request, response, url)
    } else {
      response.writeHead(404).end()
    }
  } catch (error) {
    console.log(`error: ${error.message}`)
    if (!response.headersSent) response.writeHead(error.name === 'NotFoundError' ? 404 : 500)
    response.end(JSON.stringify({ Message: error.message, Code: 0, Type: 'error' }))
  }
})
server.listen(Number(options.port), '127.0.0.1', () => console.log(`root ${root}`))
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => { server.close(); helia.stop().finally(() => process.exit(0)) })
}
