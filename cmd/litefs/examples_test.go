package main

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"gopkg.in/yaml.v3"
)

// TestExamples validates the configs of examples/: each file as litefs
// reads it, and the one in the Kubernetes ConfigMap; every manifest must
// parse.
func TestExamples(t *testing.T) {
	t.Setenv("HOSTNAME", "node1")
	t.Setenv("LITEFS_SECRET", "s")
	t.Setenv("POD_NAMESPACE", "default")
	validate := func(name string, b []byte) {
		t.Helper()
		c, err := ParseConfig(b)
		if err == nil {
			err = c.Validate()
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if c.HTTP.Secret != "s" {
			t.Fatalf("%s: the example does not set http.secret from LITEFS_SECRET", name)
		}
	}
	for _, name := range []string{"docker/litefs.yml", "systemd/litefs.yml"} {
		b, err := os.ReadFile(filepath.Join("..", "..", "examples", name))
		if err != nil {
			t.Fatal(err)
		}
		validate(name, b)
	}

	b, err := os.ReadFile(filepath.Join("..", "..", "examples", "kubernetes", "litefs.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var doc struct {
			Kind string            `yaml:"kind"`
			Data map[string]string `yaml:"data"`
		}
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("kubernetes/litefs.yaml: %v", err)
		}
		if doc.Kind == "ConfigMap" {
			validate("kubernetes/litefs.yaml ConfigMap", []byte(doc.Data["litefs.yml"]))
			found = true
		}
	}
	if !found {
		t.Fatal("kubernetes/litefs.yaml has no ConfigMap")
	}
	var any map[string]any
	if b, err := os.ReadFile(filepath.Join("..", "..", "examples", "kubernetes", "consul.yaml")); err != nil {
		t.Fatal(err)
	} else if err := yaml.NewDecoder(bytes.NewReader(b)).Decode(&any); err != nil {
		t.Fatalf("kubernetes/consul.yaml: %v", err)
	}
}
