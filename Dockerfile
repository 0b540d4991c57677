# The image of fsmount's CSI node plugin (deploy/kubernetes/node.yaml): fsmount installed by the project's own
# scripts/setup, then carried into a slim image with what it runs on (FUSE, mount(8), tini to reap the daemons it
# starts in the background). Build from the repository's root: docker build -t fsmount-csi .
FROM debian:bookworm-slim AS build
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv ca-certificates >/dev/null
WORKDIR /opt/fsmount
COPY . .
RUN scripts/setup && rm -rf scripts/node_modules

FROM debian:bookworm-slim
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3 fuse3 libfuse3-3 mount util-linux ca-certificates tini >/dev/null \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/fsmount /opt/fsmount
RUN ln -s /opt/fsmount/.venv/bin/fsmount /usr/local/bin/fsmount \
 && ln -s /opt/fsmount/.venv/bin/mount.fsmount /sbin/mount.fuse.fsmount
ENTRYPOINT ["/usr/bin/tini", "--", "fsmount"]
CMD ["csi", "--help"]
