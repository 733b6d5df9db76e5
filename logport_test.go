package tether_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	"go.uber.org/zap"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/incident/logport"
)

// A node with WithLogPort serves its log stream; a subscriber on another
// node sees the entries in order, with the node's own lines among them.
func TestLogPortServesTheNodesLog(t *testing.T) {
	a := node(t, tether.WithLogPort(), tether.WithIncidentDir(t.TempDir()))
	b := node(t)
	p := dial(t, b, a)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var got []string
	started := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := logport.Subscribe(ctx, p, func(e logport.Entry) {
			mu.Lock()
			got = append(got, string(e.JSON))
			mu.Unlock()
		}, logport.OnStart(func(logport.Position) { close(started) }))
		done <- err
	}()
	<-started
	for i := range 100 {
		a.Logger().Info("share stored", zap.Int("i", i))
	}
	waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(got) >= 100 }, "100 entries")
	mu.Lock()
	first, last := got[0], got[len(got)-1]
	mu.Unlock()
	if !strings.Contains(first, `"i":0`) || !strings.Contains(last, `"i":99`) {
		t.Fatalf("first %s last %s", first, last)
	}
	cancel()
	<-done
}
