package shim_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/cloister/cloister/internal/egress"
	"github.com/cloister/cloister/parent"
	"github.com/cloister/cloister/parent/daemon"
	"github.com/cloister/cloister/parent/deviceplugin"
	"github.com/cloister/cloister/parent/parenttest"
	"github.com/cloister/cloister/parent/shim"
)

// TestDeployManifests keeps deploy/kubernetes true to the code: every
// document parses, the RuntimeClass names the handler of
// deploy/containerd/cloister.toml (which TestCRI runs), pod annotations
// are ones the shim reads and accepts, a pod's egress allowlist is within
// the node's (the daemon's ConfigMap), and extended resources are the
// device plugin's.
func TestDeployManifests(t *testing.T) {
	root := parenttest.RepoRoot()
	files, err := filepath.Glob(filepath.Join(root, "deploy", "kubernetes", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	known := []string{shim.AnnotationPorts, shim.AnnotationDebug, shim.AnnotationCPUs, shim.AnnotationMemory, shim.AnnotationEgressAllow}
	var nodeEgress *egress.Allowlist // the daemon ConfigMap's egress-allowlist.yaml
	var podEgress []*parent.EgressPolicy
	resources := []string{"cpu", "memory", deviceplugin.ResourceNitroEnclaves, deviceplugin.ResourceCPU, deviceplugin.ResourceMemory}
	kinds := map[string]int{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		for {
			var doc struct {
				Kind     string            `yaml:"kind"`
				Handler  string            `yaml:"handler"`
				Data     map[string]string `yaml:"data"`
				Metadata struct {
					Annotations map[string]string `yaml:"annotations"`
				} `yaml:"metadata"`
				Spec struct {
					RuntimeClassName string `yaml:"runtimeClassName"`
					Containers       []struct {
						Resources struct {
							Limits map[string]string `yaml:"limits"`
						} `yaml:"resources"`
					} `yaml:"containers"`
				} `yaml:"spec"`
			}
			if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			kinds[doc.Kind]++
			if doc.Kind == "RuntimeClass" && doc.Handler != "cloister" {
				t.Errorf("%s: RuntimeClass handler %q, want cloister (deploy/containerd/cloister.toml)", f, doc.Handler)
			}
			for k := range doc.Metadata.Annotations {
				if strings.HasPrefix(k, "cloister.dev/") && !slices.Contains(known, k) {
					t.Errorf("%s: annotation %s is not read by the shim", f, k)
				}
			}
			if doc.Kind == "Pod" {
				s := &shim.Spec{Annotations: doc.Metadata.Annotations}
				if _, err := s.Ports(); err != nil {
					t.Errorf("%s: %v", f, err)
				}
				p, err := s.Egress()
				if err != nil {
					t.Errorf("%s: %v", f, err)
				}
				if p != nil {
					podEgress = append(podEgress, p)
				}
			}
			if doc.Kind == "ConfigMap" {
				if y, ok := doc.Data["daemon.yaml"]; ok {
					if _, err := daemon.ParseConfig([]byte(y)); err != nil {
						t.Errorf("%s: daemon.yaml: %v", f, err)
					}
				}
				if y, ok := doc.Data["egress-allowlist.yaml"]; ok {
					if nodeEgress, err = egress.ParseAllowlist([]byte(y)); err != nil {
						t.Errorf("%s: egress-allowlist.yaml: %v", f, err)
					}
				}
			}
			if doc.Kind == "Pod" && doc.Spec.RuntimeClassName != "cloister" {
				t.Errorf("%s: pod without runtimeClassName cloister", f)
			}
			for _, c := range doc.Spec.Containers {
				for r := range c.Resources.Limits {
					if !slices.Contains(resources, r) {
						t.Errorf("%s: resource %s is not advertised", f, r)
					}
				}
			}
		}
	}
	for _, p := range podEgress {
		own := &egress.Allowlist{}
		for _, e := range p.Allowlist {
			own.Entries = append(own.Entries, egress.Entry{Address: e.Address, Port: e.Port})
		}
		if out := own.Outside(nodeEgress); len(out) > 0 {
			t.Errorf("a pod's %s entries %v are not within the node's egress allowlist: the daemon would refuse the pod", shim.AnnotationEgressAllow, out)
		}
	}
	for _, k := range []string{"RuntimeClass", "DaemonSet", "Pod", "Service", "Deployment"} {
		if kinds[k] == 0 {
			t.Errorf("no %s in deploy/kubernetes", k)
		}
	}
	toml, err := os.ReadFile(filepath.Join(root, "deploy", "containerd", "cloister.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(toml), `runtimes.cloister]`) || !strings.Contains(string(toml), `"cloister.dev/*"`) {
		t.Errorf("deploy/containerd/cloister.toml: want the cloister handler passing cloister.dev/* annotations")
	}
}
