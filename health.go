package tether

import (
	"encoding/json"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Health returns an http.Handler serving /healthz (liveness: is the process
// sound: no handler stuck past WithHangAfter, the dispatcher moving,
// goroutines and memory within the bounds of WithActions) and /readyz
// (readiness: healthy, not draining, and, if it keeps peers connected, at
// least one reachable). Each answers 200 with {"status":"ok"}, or 503 with
// {"status":"unhealthy", "reasons":[...]} naming each cause precisely. The
// state recovers by itself when the cause goes. Kubernetes probes can point
// at them directly. With WithMetrics and a registerer that is also a
// gatherer, /metrics serves the node's metrics.
func (n *Node) Health() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		writeHealth(w, n.healthReasons())
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		writeHealth(w, n.readyReasons())
	})
	if g, ok := n.opts.metrics.(prometheus.Gatherer); ok {
		mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	}
	return mux
}

// healthReasons: is the process sound? Stuck handlers, a stalled
// dispatcher, goroutines or memory past their bounds or leaking.
func (n *Node) healthReasons() []string {
	if n.ctx.Err() != nil {
		return []string{"closed"}
	}
	_, reasons := n.wd.Healthy()
	return reasons
}

// readyReasons: should it get traffic? Not while unhealthy, draining, or
// when it keeps peers connected and reaches none of them.
func (n *Node) readyReasons() []string {
	reasons := n.healthReasons()
	if n.draining.Load() {
		reasons = append(reasons, "draining")
	}
	if kept, live := n.reg.KeptReachable(); kept > 0 && live == 0 {
		reasons = append(reasons, "no peer reachable: none of the "+itoa(uint64(kept))+" kept addresses is connected")
	}
	return reasons
}

type healthBody struct {
	Status  string   `json:"status"`
	Reasons []string `json:"reasons,omitempty"`
}

func writeHealth(w http.ResponseWriter, reasons []string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	body := healthBody{Status: "ok"}
	if len(reasons) > 0 {
		body = healthBody{Status: "unhealthy", Reasons: reasons}
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	json.NewEncoder(w).Encode(body)
}
