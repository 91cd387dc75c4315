#!/bin/sh
# Runs before containerd starts (containerd.service.d/10-kubetune-runc.conf). A privileged
# pod (kube-proxy, flanneld) asks runc for every capability the kernel knows; where this
# node's capability bounding set lacks some (seen on sandboxed CI machines, whose Docker
# engine runs the node through the same wrapper), runc fails with "unable to apply caps".
# Only then is runc-capfilter put first on containerd's PATH as `runc`: it removes the
# capabilities the node cannot grant and runs /usr/sbin/runc. Where the set is
# complete nothing changes and containerd runs /usr/sbin/runc directly.
#
# Without CAP_SYS_RESOURCE a process cannot lower an oom_score_adj, and runc fails to
# start every pod sandbox ("failed to update /proc/self/oom_score_adj: Permission
# denied"): then containerd's restrict_oom_score_adj is turned on, which keeps each
# container's score at or above containerd's own (as kind does for rootless nodes).
set -eu
last=$(cat /proc/sys/kernel/cap_last_cap)
bnd=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
full=$(( (1 << (last + 1)) - 1 ))
if [ $(( 0x$bnd & full )) -ne "$full" ]; then
  echo "select-runc: capability bounding set 0x$bnd is incomplete: runc-capfilter wraps runc" >&2
  ln -sf /usr/local/bin/runc-capfilter /usr/local/sbin/runc
else
  rm -f /usr/local/sbin/runc
fi
if [ $(( (0x$bnd >> 24) & 1 )) -eq 0 ]; then
  echo "select-runc: no CAP_SYS_RESOURCE: containerd restricts oom_score_adj" >&2
  sed -i 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' /etc/containerd/config.toml
fi
