package tether_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/tetherrpc/tether"
	"github.com/tetherrpc/tether/internal/ttest/ttnode"
	"github.com/tetherrpc/tether/peer"
	"github.com/tetherrpc/tether/rpc"
)

// scrape fetches /metrics over HTTP and parses it.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

// value finds the metric of family name whose labels include want.
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.Metric {
		for k, v := range want {
			found := false
			for _, l := range m.Label {
				if l.GetName() == k && l.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

func TestMetricsOverHTTP(t *testing.T) {
	reg := prometheus.NewRegistry()
	a := node(t, tether.WithMetrics(reg), tether.WithLogger(zapNop()))
	b := node(t)
	a.Handle("echo", rpc.Func(echo))
	b.Handle("echo", rpc.Func(echo))
	srv := httptest.NewServer(a.Health())
	defer srv.Close()
	ev := ttnode.Subscribe(t, a.Peers())

	p := dial(t, a, b)
	for range 10 {
		if err := p.Call(context.Background(), "echo", []byte("x"), nil); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, func() bool { _, ok := b.Peers().Get(a.ID()); return ok }, "b to register a")
	q, _ := b.Peers().Get(a.ID())
	for range 3 {
		q.Call(context.Background(), "echo", nil, nil) // served by a
	}
	fams := scrape(t, srv.URL)
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"tether_peers", map[string]string{"state": "alive"}, 1},
		{"tether_calls_total", map[string]string{"direction": "out"}, 10},
		{"tether_calls_total", map[string]string{"direction": "in"}, 3},
		{"tether_call_duration_seconds", map[string]string{"method": "echo"}, 10},
		{"tether_handler_duration_seconds", map[string]string{"method": "echo"}, 3},
		{"tether_connects_total", nil, 1},
	}
	for _, c := range checks {
		if v, ok := value(fams, c.name, c.labels); !ok || v != c.want {
			t.Errorf("%s%v = %v (found %v), want %v", c.name, c.labels, v, ok, c.want)
		}
	}
	if v, ok := value(fams, "tether_probes_total", nil); !ok || v < 1 {
		t.Errorf("tether_probes_total = %v", v)
	}
	if _, ok := value(fams, "tether_log_entries_total", map[string]string{"state": "enqueued"}); !ok {
		t.Error("no log metrics")
	}
	if v, ok := value(fams, "tether_healthy", nil); !ok || v != 1 {
		t.Errorf("tether_healthy = %v (found %v)", v, ok)
	}

	a.Peers().Evict(p.ID(), errors.New("operator"))
	ev.Next(t, peer.Disconnected, 5e9)
	fams = scrape(t, srv.URL)
	if v, _ := value(fams, "tether_evictions_total", map[string]string{"cause": "other"}); v != 1 {
		t.Errorf("evictions{cause=other} = %v", v)
	}
	if v, _ := value(fams, "tether_peers", map[string]string{"state": "alive"}); v != 0 {
		t.Errorf("peers alive after eviction = %v", v)
	}
	// Counters survive the reference: the calls of dead references still count.
	if v, _ := value(fams, "tether_calls_total", map[string]string{"direction": "out"}); v != 10 {
		t.Errorf("calls out after eviction = %v", v)
	}
}
