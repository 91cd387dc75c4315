// runc-capfilter is an OCI runtime wrapper for machines whose capability bounding set
// lacks capabilities that runc is asked to grant (seen: CAP_SYS_RESOURCE on sandboxed
// CI machines). A privileged container asks for every capability, and runc then fails
// with "unable to apply caps: operation not permitted". The wrapper removes the
// capabilities this process cannot hold from the container's config.json (create/run)
// or from the --process file (exec), then executes the real runc with the same
// arguments. Where the bounding set is complete it changes nothing.
//
// It is test-ground support: hack/docker-engine.sh installs it as dockerd's default
// runtime only when the machine needs it, and the kind node image uses it as
// containerd's runc binary for the same reason one level down.
//
// The real runc is $RUNC_CAPFILTER_RUNC, else the first of /usr/local/sbin/runc.real,
// /usr/sbin/runc, /usr/bin/runc that exists.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// capNames maps capability numbers to the names OCI configs use (linux/capability.h).
var capNames = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
	"CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
	"CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
	"CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
	"CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
	"CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
	"CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
	"CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
	"CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
}

// missingCaps returns the capabilities absent from this process's bounding set.
func missingCaps() map[string]bool {
	missing := map[string]bool{}
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return missing
	}
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.HasPrefix(line, "CapBnd:") {
			continue
		}
		bnd, err := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(line, "CapBnd:")), 16, 64)
		if err != nil {
			return missing
		}
		for i, name := range capNames {
			if bnd&(1<<uint(i)) == 0 {
				missing[name] = true
			}
		}
	}
	return missing
}

// filterCaps removes the missing capabilities from every set of a capabilities object.
func filterCaps(caps map[string]any, missing map[string]bool) {
	for set, v := range caps {
		list, ok := v.([]any)
		if !ok {
			continue
		}
		kept := make([]any, 0, len(list))
		for _, c := range list {
			if s, ok := c.(string); ok && missing[s] {
				continue
			}
			kept = append(kept, c)
		}
		caps[set] = kept
	}
}

// rewrite filters the capabilities found at obj[path...] in the JSON file.
func rewrite(file string, path []string, missing map[string]bool) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var doc map[string]any
	if err := json.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	node := doc
	for _, key := range path {
		next, ok := node[key].(map[string]any)
		if !ok {
			return nil // no capabilities object: nothing to filter
		}
		node = next
	}
	filterCaps(node, missing)
	out, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	info, err := os.Stat(file)
	if err != nil {
		return err
	}
	return os.WriteFile(file, out, info.Mode().Perm())
}

// flagValue returns the value of --name/-short in args ("--name v", "--name=v").
func flagValue(args []string, long, short string) (string, bool) {
	for i, a := range args {
		switch {
		case a == long || a == short:
			if i+1 < len(args) {
				return args[i+1], true
			}
		case strings.HasPrefix(a, long+"="):
			return strings.TrimPrefix(a, long+"="), true
		case strings.HasPrefix(a, short+"="):
			return strings.TrimPrefix(a, short+"="), true
		}
	}
	return "", false
}

// subcommand returns the first of create/run/exec among args (runc's global flags come first).
func subcommand(args []string) string {
	for _, a := range args {
		switch a {
		case "create", "run", "exec":
			return a
		}
	}
	return ""
}

func realRunc() string {
	if p := os.Getenv("RUNC_CAPFILTER_RUNC"); p != "" {
		return p
	}
	self, _ := os.Executable()
	for _, p := range []string{"/usr/local/sbin/runc.real", "/usr/sbin/runc", "/usr/bin/runc"} {
		if resolved, err := filepath.EvalSymlinks(p); err == nil && resolved != self {
			if _, err := os.Stat(p); err == nil {
				return p
			}
		}
	}
	if p, err := exec.LookPath("runc"); err == nil {
		return p
	}
	return "/usr/sbin/runc"
}

func main() {
	args := os.Args[1:]
	missing := missingCaps()
	if len(missing) > 0 {
		var err error
		switch subcommand(args) {
		case "create", "run":
			bundle, ok := flagValue(args, "--bundle", "-b")
			if !ok {
				bundle, _ = os.Getwd()
			}
			err = rewrite(filepath.Join(bundle, "config.json"), []string{"process", "capabilities"}, missing)
		case "exec":
			if process, ok := flagValue(args, "--process", "-p"); ok {
				err = rewrite(process, []string{"capabilities"}, missing)
			}
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "runc-capfilter: %v\n", err)
			os.Exit(1)
		}
	}
	runc := realRunc()
	if err := syscall.Exec(runc, append([]string{runc}, args...), os.Environ()); err != nil {
		fmt.Fprintf(os.Stderr, "runc-capfilter: cannot run %s: %v\n", runc, err)
		os.Exit(1)
	}
}
