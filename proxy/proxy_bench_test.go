package proxy_test

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"testing"

	"github.com/litefs-project/litefs/proxy"
	"github.com/litefs-project/litefs/replica"
)

// BenchmarkServer_Read measures, in one process, a read straight to an
// app, through a bare httputil.ReverseProxy (with a buffer pool and kept
// connections, as proxy.Server's), and through proxy.Server on a primary:
// the difference between the last two is what the proxy's routing costs
// per request (time and allocations; the client's and the app's
// allocations are in every row alike).
//
//	go test ./proxy -run '^$' -bench Server_Read -benchtime 20000x
func BenchmarkServer_Read(b *testing.B) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "row-1\n")
	}))
	defer app.Close()
	target, _ := url.Parse(app.URL)

	plain := httptest.NewServer(&httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
		},
		Transport:  &http.Transport{MaxIdleConnsPerHost: 128},
		BufferPool: &pool{},
	})
	defer plain.Close()

	store := replica.NewStore(b.TempDir())
	store.Logger = slog.New(slog.DiscardHandler)
	if err := store.Open(); err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	s := proxy.NewServer(store, "127.0.0.1:0", target.Host, []string{"app.db"})
	s.OnRequest = func(route, outcome string) {}
	if err := s.Open(); err != nil {
		b.Fatal(err)
	}
	defer s.Close()

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	for _, row := range []struct{ name, url string }{
		{"direct", app.URL},
		{"plain-reverseproxy", plain.URL},
		{"proxy", "http://" + s.ListenAddr().String()},
	} {
		b.Run(row.name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				resp, err := client.Get(fmt.Sprintf("%s/item?id=%d", row.url, i%100))
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Fatalf("%s: %d", row.name, resp.StatusCode)
				}
			}
		})
	}
}

type pool struct{ p sync.Pool }

func (p *pool) Get() []byte {
	if b, ok := p.p.Get().(*[]byte); ok {
		return *b
	}
	return make([]byte, 32<<10)
}

func (p *pool) Put(b []byte) { p.p.Put(&b) }
