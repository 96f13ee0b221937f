package replica

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// TLSFiles names the PEM files of a node's TLS setup (http.tls).
type TLSFiles struct {
	Cert string // this node's certificate chain
	Key  string // its private key
	// CA holds the certificates that sign the cluster's nodes: clients
	// verify servers against it, and with Mutual, servers verify clients.
	CA string
	// Mutual makes the server require a client certificate signed by CA.
	Mutual bool
}

// Enabled reports whether the node serves TLS.
func (f TLSFiles) Enabled() bool { return f.Cert != "" || f.Key != "" }

// ServerConfig returns the API server's TLS config, or an error naming
// the file at fault.
func (f TLSFiles) ServerConfig() (*tls.Config, error) {
	if f.Cert == "" || f.Key == "" {
		return nil, errors.New("http.tls: cert and key are both required to serve TLS")
	}
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("http.tls: load the certificate %s with the key %s: %w", f.Cert, f.Key, err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if f.Mutual {
		if f.CA == "" {
			return nil, errors.New("http.tls.mutual: needs http.tls.ca, the CA that signs the clients' certificates")
		}
		pool, err := loadCA(f.CA)
		if err != nil {
			return nil, err
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// ClientConfig returns the TLS config a node (or the CLI) calls other
// nodes with: servers verified against CA (the system's roots if unset),
// and this node's certificate offered, for mutual TLS, if set.
func (f TLSFiles) ClientConfig() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.CA != "" {
		pool, err := loadCA(f.CA)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	if f.Cert != "" || f.Key != "" {
		cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			return nil, fmt.Errorf("http.tls: load the certificate %s with the key %s: %w", f.Cert, f.Key, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

func loadCA(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("http.tls.ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("http.tls.ca: %s holds no PEM certificate", path)
	}
	return pool, nil
}
