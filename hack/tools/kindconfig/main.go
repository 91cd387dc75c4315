// kindconfig checks kind cluster configuration files against kind's own config API
// types (sigs.k8s.io/kind/pkg/apis/config/v1alpha4), strictly: an unknown or
// misspelt field is an error, as is a value of the wrong type, so a typo in
// kind-config.yaml fails a test here instead of being ignored by `kind create cluster`.
// It also applies the checks kind makes before it creates anything (node roles, at
// least one control-plane node, port and mount fields).
//
// Usage: kindconfig FILE...   (exit 1 and one line per problem if any file is invalid)
package main

import (
	"fmt"
	"os"

	"sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
	"sigs.k8s.io/yaml"
)

func check(path string) []string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return []string{err.Error()}
	}
	var cluster v1alpha4.Cluster
	if err := yaml.UnmarshalStrict(raw, &cluster); err != nil {
		return []string{fmt.Sprintf("%s: %v", path, err)}
	}
	var problems []string
	add := func(format string, args ...any) {
		problems = append(problems, fmt.Sprintf("%s: "+format, append([]any{path}, args...)...))
	}
	if cluster.Kind != "Cluster" || cluster.APIVersion != "kind.x-k8s.io/v1alpha4" {
		add("kind %q apiVersion %q: want kind Cluster, apiVersion kind.x-k8s.io/v1alpha4", cluster.Kind, cluster.APIVersion)
	}
	v1alpha4.SetDefaultsCluster(&cluster)
	controlPlanes := 0
	for i, node := range cluster.Nodes {
		switch node.Role {
		case v1alpha4.ControlPlaneRole:
			controlPlanes++
		case v1alpha4.WorkerRole:
		default:
			add("nodes[%d].role %q: want control-plane or worker", i, node.Role)
		}
		for j, port := range node.ExtraPortMappings {
			if port.ContainerPort <= 0 || port.ContainerPort > 65535 || port.HostPort < 0 || port.HostPort > 65535 {
				add("nodes[%d].extraPortMappings[%d]: ports must be within 1-65535", i, j)
			}
		}
		for j, mount := range node.ExtraMounts {
			if mount.HostPath == "" || mount.ContainerPath == "" {
				add("nodes[%d].extraMounts[%d]: hostPath and containerPath are required", i, j)
			}
		}
		for j, patch := range node.KubeadmConfigPatches {
			var doc map[string]any
			if err := yaml.Unmarshal([]byte(patch), &doc); err != nil || doc["kind"] == nil {
				add("nodes[%d].kubeadmConfigPatches[%d]: not a YAML object with a kind", i, j)
			}
		}
	}
	if controlPlanes == 0 {
		add("no control-plane node")
	}
	return problems
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: kindconfig FILE...")
		os.Exit(2)
	}
	failed := false
	for _, path := range os.Args[1:] {
		for _, problem := range check(path) {
			fmt.Println(problem)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}
