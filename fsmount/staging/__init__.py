"""Files being written to object volumes: staged on local disk, journaled, uploaded."""
