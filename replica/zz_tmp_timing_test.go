package replica

import (
	"math/rand/v2"
	"testing"
	"time"
)

func TestZZTiming(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var worst time.Duration
	start := time.Now()
	for i := 0; i < 300; i++ {
		b := make([]byte, r.IntN(400))
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		t0 := time.Now()
		ok := t.Run("x", func(t *testing.T) { newFzHarness(t, b).run() })
		d := time.Since(t0)
		if d > worst {
			worst = d
		}
		if d > 500*time.Millisecond || !ok {
			t.Logf("input %d: %v ok=%v len=%d %q", i, d, ok, len(b), b)
		}
	}
	t.Logf("total %v worst %v", time.Since(start), worst)
}
