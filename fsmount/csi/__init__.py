"""The CSI node plugin (`fsmount csi`): Kubernetes pods mount fsmount volumes through it, one daemon per volume."""
