#!/bin/sh
# Chooses the iptables backend the node already uses, then runs the requested tool with it
# (the logic of kubernetes-sigs/iptables-wrappers, which kind's entrypoint also uses): the
# backend with more rules wins; nft when neither has any. The choice is made once: the
# links in /usr/local/sbin are replaced by the chosen backend's binaries.
set -eu
legacy=$( (iptables-legacy-save || true; ip6tables-legacy-save || true) 2>/dev/null | grep -c '^-' || true)
nft=$( (timeout 5 sh -c "iptables-nft-save; ip6tables-nft-save" || true) 2>/dev/null | grep -c '^-' || true)
mode=nft
if [ "$legacy" -gt "$nft" ]; then mode=legacy; fi
for tool in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
  ln -sf "/usr/sbin/${tool%%-*}-$mode${tool#"${tool%%-*}"}" "/usr/local/sbin/$tool" 2>/dev/null || true
done
exec "/usr/sbin/$(basename "$0" | sed "s/^\(ip6\{0,1\}tables\)/\1-$mode/")" "$@"
