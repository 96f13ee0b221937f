package tests

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/litefs-project/litefs/replica"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	path string // its certificate, PEM
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &testCA{dir: t.TempDir(), cert: cert, key: key}
	ca.path = filepath.Join(ca.dir, name+"-ca.crt")
	writePEM(t, ca.path, "CERTIFICATE", der)
	return ca
}

// issue returns the TLS files of a node certificate for 127.0.0.1 signed
// by ca, for server and client use.
func (ca *testCA) issue(t *testing.T, name string) replica.TLSFiles {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	f := replica.TLSFiles{Cert: filepath.Join(ca.dir, name+".crt"), Key: filepath.Join(ca.dir, name+".key"), CA: ca.path, Mutual: true}
	writePEM(t, f.Cert, "CERTIFICATE", der)
	writePEM(t, f.Key, "EC PRIVATE KEY", kb)
	return f
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestTLS_ConsulCluster runs three candidates on Consul with a cluster
// secret and mutual TLS: writes replicate, a handoff, an export and an
// import work
// through the CLI with the client's certificate; a node with a
// certificate from another CA, a client without a certificate, and plain
// HTTP are all refused, and the cluster keeps working.
func TestTLS_ConsulCluster(t *testing.T) {
	const secret = "tls-cluster-secret"
	ca, rogueCA := newTestCA(t, "cluster"), newTestCA(t, "rogue")
	n := 0
	c := startConsulClusterWith(t, 3, litefsBin, func(cfg *NodeConfig) {
		n++
		cfg.Secret, cfg.TLS = secret, ca.issue(t, cfg.Name)
	})
	w := startWriter(t, c, "db", "wal")
	p := c.WaitPrimary(t, 5*time.Second)
	w.waitWrites(t, 30)

	// A replica whose certificate another CA signed cannot stream.
	rogue := NewNodeWith(t, NodeConfig{Name: "rogue", Replica: true, PrimaryURL: p.URL(), Secret: secret, TLS: rogueCA.issue(t, "rogue")})
	rogue.Start()
	waitUntil(t, 20*time.Second, "the rogue replica to be refused", func() bool {
		return strings.Contains(rogue.Logs(), "certificate")
	})
	for _, line := range strings.Split(rogue.Logs(), "\n") {
		if strings.Contains(line, "certificate") {
			t.Logf("the rogue replica logs: %s", line)
			break
		}
	}
	if _, err := os.Stat(rogue.Path("db")); err == nil {
		t.Fatal("the replica with a certificate from another CA received the database")
	}

	client := ca.issue(t, "operator")
	cli := func(command string, args ...string) (string, error) {
		cmd := exec.Command(litefsBin, append([]string{command, "-ca", client.CA, "-cert", client.Cert, "-key", client.Key}, args...)...)
		cmd.Env = append(os.Environ(), "LITEFS_SECRET="+secret)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	var target *Node
	for _, node := range c.Nodes {
		if node != p {
			target = node
		}
	}
	if out, err := cli("handoff", "-url", p.URL(), "-to", target.Name); err != nil {
		t.Fatalf("litefs handoff over TLS: %v\n%s", err, out)
	}
	if got := c.WaitPrimary(t, 10*time.Second); got != target {
		t.Fatalf("primary is %s after the handoff to %s", got.Name, target.Name)
	}
	w.waitWritesOn(t, target)
	dst := filepath.Join(t.TempDir(), "copy.db")
	if out, err := cli("export", "-name", "db", "-url", p.URL(), dst); err != nil || !strings.Contains(out, "exported db") {
		t.Fatalf("litefs export over TLS from a replica: %v\n%s", err, out)
	}
	if got := mustSQLite3(t, dst, "PRAGMA integrity_check"); got != "ok" {
		t.Fatalf("exported copy: %s", got)
	}
	// The copy imported under a new name through a replica (sent on to
	// the primary) reaches every node.
	waitUntil(t, 10*time.Second, p.Name+" to follow "+target.Name, func() bool {
		info, err := getAPIInfo(p)
		return err == nil && info.Connected && info.PrimaryHostname == target.Name
	})
	if out, err := cli("import", "-name", "copy.db", "-url", p.URL(), dst); err != nil || !strings.Contains(out, "imported") {
		t.Fatalf("litefs import over TLS through a replica: %v\n%s", err, out)
	}
	want := target.Pos("copy.db")
	for _, n := range c.Nodes {
		waitUntil(t, 20*time.Second, n.Name+" to have the imported database", func() bool {
			b, err := os.ReadFile(n.Path("copy.db-pos"))
			return err == nil && strings.TrimSpace(string(b)) == want.String()
		})
	}

	// Outsiders: plain HTTP, no client certificate, a certificate from
	// another CA. Each is refused; curl shows how.
	httpURL := "http://" + target.HTTPAddr + "/info"
	if out, _ := exec.Command("curl", "-sS", httpURL).CombinedOutput(); !strings.Contains(string(out), "HTTP request to an HTTPS server") {
		t.Fatalf("plain HTTP to the TLS API: %s", out)
	}
	if out, err := exec.Command("curl", "-sS", "--cacert", ca.path, "-H", "Authorization: Bearer "+secret, target.URL()+"/info").CombinedOutput(); err == nil {
		t.Fatalf("a client without a certificate got through mutual TLS: %s", out)
	}
	bad := rogueCA.issue(t, "outsider")
	if out, err := exec.Command("curl", "-sS", "--cacert", ca.path, "--cert", bad.Cert, "--key", bad.Key,
		"-H", "Authorization: Bearer "+secret, target.URL()+"/info").CombinedOutput(); err == nil {
		t.Fatalf("a client certificate from another CA got through: %s", out)
	}
	out, err := exec.Command("curl", "-sS", "--cacert", ca.path, "--cert", client.Cert, "--key", client.Key,
		"-H", "Authorization: Bearer "+secret, target.URL()+"/info").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"primary":true`) {
		t.Fatalf("curl with the cluster's client certificate: %v %s", err, out)
	}
	if !strings.Contains(target.Logs(), "TLS handshake error") {
		t.Fatalf("the refused handshakes are not logged:\n%s", target.Logs())
	}

	// The cluster kept working: every acknowledged write is there, on
	// every node.
	w.waitWrites(t, 20)
	w.Stop()
	checkNoneLost(t, target, "db", w.Acks())
	c.WaitConverged(t, "db")
}
