// Package scale measures what N idle peers cost a server, and how fast it
// notices silent ones among them: the harness behind the scale test and the
// manypeers program.
//
// One process (the node) runs the system under test, a server listening on
// loopback; a second process, the same binary re-executed (see Child),
// opens N idle connections to it, so that what is measured in the node is
// the node's cost alone. Run then measures, in the node:
//
//   - the time for all N to connect and be registered, dialled all at
//     once (or Config.DialConcurrency at a time);
//   - the node's CPU over an idle window, as a share of one core
//     (getrusage of the node process);
//   - heap and goroutine stacks per peer (HeapInuse+StackInuse after GC,
//     minus the same before the peers came), and goroutines per peer;
//   - connections lost during the idle window (false evictions);
//   - the detection time of a peer silenced by an iptables DROP of its
//     port (a silent partition: no RST, no ICMP), for several peers
//     silenced one at a time;
//   - a mass failure: a fraction of the peers silenced at once by one
//     iptables-restore; when each was noticed, whether any other peer was
//     lost, the lines logged at Warn or above and the incident files
//     written meanwhile;
//   - the packets the kernel dropped on full input backlogs meanwhile,
//     which would make live connections look silent.
//
// Silencing needs a private network namespace (partition.Isolated or
// partition.Reexec), root and iptables; without them Run measures the
// rest and says why it did not silence. In such a namespace TuneNamespace
// raises the limits that thousands of connections dialled at once meet.
// Every wait is bounded in time and every loop in count; all traffic stays
// on loopback.
//
// To see where the node's memory goes, set TETHER_SCALE_HEAPPROFILE to a
// file name: Run writes the node's heap profile there after the idle
// window, once memory is measured (go tool pprof -sample_index=inuse_space).
// TETHER_SCALE_GOROUTINEPROFILE does the same for its goroutines, grouped
// by stack.
package scale

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"slices"
	"time"
)

// A System is the software under test, both its server side (run in the
// node process) and its client side (run in the peers process). Its
// methods are called from one goroutine, except Dial, which the peers
// process calls from many at once.
type System interface {
	// Name names the system in reports and in the peers process's
	// environment: letters, digits and dashes.
	Name() string
	// Serve starts the server side listening on 127.0.0.1:0, in the node
	// process.
	Serve() (Server, error)
	// Dial opens one idle connection to addr from the peers process and
	// returns once it is established (handshakes done). Closing the
	// returned closer ends the connection.
	Dial(ctx context.Context, addr string) (io.Closer, error)
}

// A Server is the running server side of a System.
type Server interface {
	// Addr is the address the server listens on ("127.0.0.1:port").
	Addr() string
	// Peers is the number of connections registered and live now.
	Peers() int
	// Ports lists the peers' source ports of the live connections: a
	// peer's port is what silences it.
	Ports() []int
	// Lost reports whether the server has noticed that the connection from
	// port is gone (evicted, closed or reset), and when. A system that
	// cannot tell when may return the time of the call.
	Lost(port int) (at time.Time, lost bool)
	// WarnLines is the number of lines the server has logged at Warn level
	// or above so far.
	WarnLines() int
	// Incidents is the number of incident files written so far; zero for a
	// system without them.
	Incidents() int
	// Close stops the server and ends its connections.
	Close() error
}

// Config says what Run measures.
type Config struct {
	Peers int // idle peers to connect (default 1000)

	// DialConcurrency bounds the peers process's dials in progress; 0
	// dials all at once.
	DialConcurrency int
	// ConnectTimeout bounds the wait for all peers to be registered
	// (default 10 s plus 2 ms a peer: 30 s for 10,000). Past it, Run
	// measures the peers registered and returns an error saying so.
	ConnectTimeout time.Duration
	// ConnectOnly stops Run once all peers are registered.
	ConnectOnly bool
	// Settle is a pause after the last peer connected, before the idle
	// window (default 1 s).
	Settle time.Duration
	// Idle is the window over which CPU and false evictions are measured
	// (default 10 s).
	Idle time.Duration
	// Silence enables the silencing steps; it needs a private network
	// namespace, root and iptables (see CanSilence).
	Silence bool
	// Singles is how many peers are silenced one at a time, each once the
	// one before was noticed, for the detection time (default 5; one only
	// when it took longer than 5 s).
	Singles int
	// SilenceFrac is the fraction of the peers silenced at once in the mass
	// failure (default 0.2; negative skips it).
	SilenceFrac float64
	// DetectTimeout bounds the wait for a silenced peer to be noticed, and
	// for the mass failure to be (default 45 s: past yamux's default
	// keepalive of 30 s plus its 10 s write timeout).
	DetectTimeout time.Duration
	// Aftermath is how long the mass failure is watched after the last
	// silenced peer was noticed, for other peers lost and for log lines
	// (default 2 s).
	Aftermath time.Duration
	// Seed chooses the silenced peers (default 1).
	Seed uint64
	// Logf, if set, is told what happens, step by step.
	Logf func(format string, args ...any)
}

func (c *Config) defaults() {
	if c.Peers <= 0 {
		c.Peers = 1000
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = 10*time.Second + time.Duration(c.Peers)*2*time.Millisecond
	}
	if c.Settle <= 0 {
		c.Settle = time.Second
	}
	if c.Idle <= 0 {
		c.Idle = 10 * time.Second
	}
	if c.Singles <= 0 {
		c.Singles = 5
	}
	if c.SilenceFrac == 0 {
		c.SilenceFrac = 0.2
	}
	if c.DetectTimeout <= 0 {
		c.DetectTimeout = 45 * time.Second
	}
	if c.Aftermath <= 0 {
		c.Aftermath = 2 * time.Second
	}
	if c.Seed == 0 {
		c.Seed = 1
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
}

// Result is what Run measured for one system. Durations are in the units
// their JSON names say; a detection that did not happen within the bound
// is -1.
type Result struct {
	System    string `json:"system"`
	Peers     int    `json:"peers"`
	Connected int    `json:"connected"` // registered at the end of the connect phase

	DialConcurrency int     `json:"dial_concurrency"` // dials in progress at most; 0: all at once
	ConnectSec      float64 `json:"connect_s"`        // from the first dial to all N registered, or to the bound if not all were
	DialRetries     int     `json:"dial_retries"`     // dials the peers process had to retry
	DialFailed      int     `json:"dial_failed"`      // connections the peers process gave up on
	// Redials counts connections that died after their dial succeeded,
	// before all were registered, and were dialled again.
	Redials int `json:"redials"`

	IdleSec           float64 `json:"idle_s"`
	CPUCore           float64 `json:"cpu_core"` // node CPU over the idle window, in cores (1 = one core busy)
	HeapPerPeer       float64 `json:"heap_b_per_peer"`
	StackPerPeer      float64 `json:"stack_b_per_peer"`
	BytesPerPeer      float64 `json:"b_per_peer"` // heap + stacks
	GoroutinesPerPeer float64 `json:"goroutines_per_peer"`
	IdleLost          int     `json:"idle_lost"` // connections lost during settle and idle: false evictions

	// NoSilence says why the silencing steps were not run; empty if they were.
	NoSilence string `json:"no_silence,omitempty"`

	DetectCount  int     `json:"detect_count"`    // peers silenced one at a time, all noticed
	DetectMS     float64 `json:"detect_ms"`       // their median detection time
	DetectMaxMS  float64 `json:"detect_max_ms"`   // and the longest
	DetectOthers int     `json:"detect_others"`   // other peers lost meanwhile
	BoundMS      float64 `json:"detect_bound_ms"` // the wait bound

	MassSilenced  int     `json:"mass_silenced"`
	MassNoticed   int     `json:"mass_noticed"`     // within the bound
	MassP50MS     float64 `json:"mass_p50_ms"`      // -1 unless all were noticed
	MassMaxMS     float64 `json:"mass_max_ms"`      // -1 unless all were noticed
	MassOthers    int     `json:"mass_others_lost"` // not silenced, but lost
	MassWarnLines int     `json:"mass_warn_lines"`  // logged at Warn or above from the silencing to the end of the aftermath
	MassIncidents int     `json:"mass_incidents"`   // incident files written in that time

	WarnLines int `json:"warn_lines"` // logged at Warn or above, all run
	Incidents int `json:"incidents"`  // incident files, all run

	// BacklogDrops counts packets the kernel dropped, anywhere on the
	// host, because an input backlog was full, from the first dial to the
	// end of the run; -1 if unknown. Loopback packets go through these
	// backlogs, so drops here can make connections look silent.
	BacklogDrops int64 `json:"backlog_drops"`
}

// Run measures sys at cfg.Peers idle peers. The peers process is this
// binary re-executed; it must call Child first thing (see Child). Run
// returns an error, with what was measured until then, if a phase could
// not be completed or the peers process failed. If fewer peers than asked
// were registered within cfg.ConnectTimeout, it measures the rest on
// those that were (the per-peer figures are divided by their number) and
// returns an error saying so. Bounds on the figures are the caller's to
// check.
func Run(ctx context.Context, sys System, cfg Config) (res *Result, err error) {
	cfg.defaults()
	var connectErr error // fewer peers registered than asked: reported, but the rest is measured
	defer func() { err = errors.Join(connectErr, err) }()
	res = &Result{System: sys.Name(), Peers: cfg.Peers, DialConcurrency: cfg.DialConcurrency, DetectMS: -1, DetectMaxMS: -1, MassP50MS: -1, MassMaxMS: -1}
	if err := RaiseFileLimit(cfg.Peers + 1024); err != nil {
		cfg.Logf("file limit: %v", err)
	}

	profileAllocations()
	before := snapshot()
	srv, err := sys.Serve()
	if err != nil {
		return res, fmt.Errorf("scale: %s: serve: %w", sys.Name(), err)
	}
	defer srv.Close()

	cfg.Logf("%s: %d peers dialling %s, %s", sys.Name(), cfg.Peers, srv.Addr(), atOnce(cfg.DialConcurrency))
	start := time.Now()
	drops0 := backlogDrops()
	defer func() {
		if d := backlogDrops(); drops0 >= 0 && d >= 0 {
			res.BacklogDrops = d - drops0
		} else {
			res.BacklogDrops = -1
		}
	}()
	peers, err := startPeers(ctx, sys.Name(), srv.Addr(), cfg.Peers, cfg.DialConcurrency)
	if err != nil {
		return res, err
	}
	defer peers.stop()
	defer Heal() // first: the peers then close their connections unhindered

	// Connect: wait for all N to be registered, and for the peers process
	// to have made all N (a server without a handshake, such as yamux's,
	// counts a connection before its dialer is done with it).
	deadline := start.Add(cfg.ConnectTimeout)
	progress, cpuStart := start.Add(5*time.Second), cpuTime()
	connected := func() bool {
		ok, reported := peers.dialedOK()
		return reported && ok == cfg.Peers && srv.Peers() >= cfg.Peers
	}
	for !connected() && time.Now().Before(deadline) && ctx.Err() == nil && !peers.exited() {
		time.Sleep(10 * time.Millisecond)
		if now := time.Now(); now.After(progress) {
			progress = now.Add(5 * time.Second)
			cfg.Logf("%s: %d registered after %.0f s (node CPU %.0f%% of a core)",
				sys.Name(), srv.Peers(), now.Sub(start).Seconds(), 100*(cpuTime()-cpuStart).Seconds()/now.Sub(start).Seconds())
		}
	}
	res.Connected = srv.Peers()
	res.ConnectSec = time.Since(start).Seconds()
	if !connected() {
		// Go on with the peers that are registered, once the peers
		// process has stopped dialling and the stragglers are in.
		res.Redials, _ = peers.settle(5 * time.Second)
		sleep(ctx, time.Second)
		res.Connected = srv.Peers()
		if st, ok := peers.dialStats(time.Second); ok {
			res.DialRetries, res.DialFailed = st.retries, st.failed
		}
		connectErr = fmt.Errorf("scale: %s: %d of %d peers registered within %v (dial retries %d, given up %d)",
			sys.Name(), res.Connected, cfg.Peers, cfg.ConnectTimeout, res.DialRetries, res.DialFailed)
		cfg.Logf("%v", connectErr)
		if res.Connected == 0 || cfg.ConnectOnly {
			return res, peers.err()
		}
	} else {
		cfg.Logf("%s: %d peers registered in %.2f s", sys.Name(), res.Connected, res.ConnectSec)
		res.Redials, _ = peers.settle(5 * time.Second)
		if st, ok := peers.dialStats(time.Second); ok {
			res.DialRetries, res.DialFailed = st.retries, st.failed
		}
		if cfg.ConnectOnly {
			return res, peers.err()
		}
	}

	// Idle: CPU, then memory and goroutines, and false evictions.
	if !sleep(ctx, cfg.Settle) {
		return res, ctx.Err()
	}
	ports := srv.Ports() // the peers measured from here on
	if len(ports) != res.Connected {
		cfg.Logf("%s: %d peers registered after the settling pause, %d before", sys.Name(), len(ports), res.Connected)
	}
	cpu0, t0 := cpuTime(), time.Now()
	if !sleep(ctx, cfg.Idle) {
		return res, ctx.Err()
	}
	cpu1, t1 := cpuTime(), time.Now()
	res.IdleSec = t1.Sub(t0).Seconds()
	res.CPUCore = (cpu1 - cpu0).Seconds() / res.IdleSec
	after := snapshot()
	n := float64(len(ports))
	res.HeapPerPeer = (float64(after.heap) - float64(before.heap)) / n
	res.StackPerPeer = (float64(after.stack) - float64(before.stack)) / n
	res.BytesPerPeer = res.HeapPerPeer + res.StackPerPeer
	res.GoroutinesPerPeer = float64(after.goroutines-before.goroutines) / n
	res.IdleLost = countLost(srv, ports, nil)
	writeProfiles(cfg.Logf)
	cfg.Logf("%s: idle %.1f s: %.1f%% of a core, %.1f KiB and %.2f goroutines a peer, %d lost",
		sys.Name(), res.IdleSec, 100*res.CPUCore, res.BytesPerPeer/1024, res.GoroutinesPerPeer, res.IdleLost)

	defer func() { res.WarnLines, res.Incidents = srv.WarnLines(), srv.Incidents() }()
	if !cfg.Silence {
		res.NoSilence = "silencing not asked for"
		return res, peers.err()
	}
	if err := CanSilence(); err != nil {
		res.NoSilence = err.Error()
		return res, peers.err()
	}
	res.BoundMS = ms(cfg.DetectTimeout)

	// Single silenced peers, one after another.
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x5ca1e))
	silenced := map[int]bool{}
	lostBefore := lostSet(srv, ports)
	var singles []time.Duration
	for range cfg.Singles {
		live := livePorts(srv, ports)
		if len(live) == 0 {
			return res, fmt.Errorf("scale: %s: no live peer left to silence", sys.Name())
		}
		victim := live[rng.IntN(len(live))]
		silenced[victim] = true
		at, err := Silence([]int{victim})
		if err != nil {
			return res, err
		}
		times := waitLost(ctx, srv, []int{victim}, at, cfg.DetectTimeout)
		d, ok := times[victim]
		if !ok {
			cfg.Logf("%s: a silenced peer (port %d) not noticed within %v", sys.Name(), victim, cfg.DetectTimeout)
			singles = nil
			break
		}
		cfg.Logf("%s: a silenced peer (port %d) noticed after %.0f ms", sys.Name(), victim, ms(d))
		singles = append(singles, d)
		if d > slowDetection {
			break // one sample of a slow detector is enough: more would take minutes
		}
	}
	res.DetectCount = len(singles)
	if len(singles) > 0 {
		slices.Sort(singles)
		res.DetectMS, res.DetectMaxMS = ms(singles[(len(singles)-1)/2]), ms(singles[len(singles)-1])
	}
	res.DetectOthers = countLost(srv, ports, mergeSets(silenced, lostBefore))
	if len(singles) > 0 {
		cfg.Logf("%s: %d peers silenced one at a time: noticed after %s at the median, %s at most; %d others lost",
			sys.Name(), len(singles), fmtMS(res.DetectMS), fmtMS(res.DetectMaxMS), res.DetectOthers)
	}

	// Mass failure.
	if cfg.SilenceFrac < 0 {
		return res, peers.err()
	}
	if res.DetectMS < 0 {
		res.NoSilence = fmt.Sprintf("mass failure skipped: a silenced peer was not noticed within %v", cfg.DetectTimeout)
		return res, peers.err()
	}
	lostBefore = lostSet(srv, ports)
	live := livePorts(srv, ports)
	k := min(int(cfg.SilenceFrac*float64(len(ports))+0.5), len(live))
	rng.Shuffle(len(live), func(i, j int) { live[i], live[j] = live[j], live[i] })
	mass := live[:k]
	slices.Sort(mass)
	for _, p := range mass {
		silenced[p] = true
	}
	warn0, inc0 := srv.WarnLines(), srv.Incidents()
	at, err := Silence(mass)
	if err != nil {
		return res, err
	}
	res.MassSilenced = len(mass)
	times := waitLost(ctx, srv, mass, at, cfg.DetectTimeout)
	res.MassNoticed = len(times)
	if len(times) == len(mass) && len(mass) > 0 {
		ds := make([]time.Duration, 0, len(times))
		for _, d := range times {
			ds = append(ds, d)
		}
		slices.Sort(ds)
		res.MassP50MS, res.MassMaxMS = ms(ds[(len(ds)-1)/2]), ms(ds[len(ds)-1])
	}
	sleep(ctx, cfg.Aftermath)
	res.MassOthers = countLost(srv, ports, mergeSets(silenced, lostBefore))
	res.MassWarnLines, res.MassIncidents = srv.WarnLines()-warn0, srv.Incidents()-inc0
	cfg.Logf("%s: %d silenced at once: %d noticed, p50 %s, max %s; %d others lost; %d Warn lines, %d incident files",
		sys.Name(), res.MassSilenced, res.MassNoticed, fmtMS(res.MassP50MS), fmtMS(res.MassMaxMS), res.MassOthers, res.MassWarnLines, res.MassIncidents)
	return res, peers.err()
}

// waitLost polls srv until every port in ports is lost or bound has passed
// since start, the instant they were silenced, and returns the detection
// time of each port noticed, from start.
func waitLost(ctx context.Context, srv Server, ports []int, start time.Time, bound time.Duration) map[int]time.Duration {
	deadline := start.Add(bound)
	out := make(map[int]time.Duration, len(ports))
	pending := slices.Clone(ports)
	for len(pending) > 0 && ctx.Err() == nil {
		now := time.Now()
		pending = slices.DeleteFunc(pending, func(p int) bool {
			at, lost := srv.Lost(p)
			if lost {
				out[p] = max(at.Sub(start), 0)
			}
			return lost
		})
		if len(pending) == 0 || now.After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	return out
}

// livePorts returns the ports, of those given, whose connections are live.
func livePorts(srv Server, ports []int) []int {
	var out []int
	for _, p := range ports {
		if _, lost := srv.Lost(p); !lost {
			out = append(out, p)
		}
	}
	return out
}

// lostSet returns the ports, of those given, whose connections are lost.
func lostSet(srv Server, ports []int) map[int]bool {
	out := map[int]bool{}
	for _, p := range ports {
		if _, lost := srv.Lost(p); lost {
			out[p] = true
		}
	}
	return out
}

// countLost counts the ports lost, of those given, leaving out those in
// except.
func countLost(srv Server, ports []int, except map[int]bool) int {
	n := 0
	for _, p := range ports {
		if except[p] {
			continue
		}
		if _, lost := srv.Lost(p); lost {
			n++
		}
	}
	return n
}

func mergeSets(a, b map[int]bool) map[int]bool {
	out := make(map[int]bool, len(a)+len(b))
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

type memSnapshot struct {
	heap, stack uint64
	goroutines  int
}

// snapshot reads heap and stacks in use after two collections, and the
// goroutine count.
func snapshot() memSnapshot {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return memSnapshot{heap: m.HeapInuse, stack: m.StackInuse, goroutines: runtime.NumGoroutine()}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// slowDetection is a detection time past which Run silences no further
// single peers.
const slowDetection = 5 * time.Second

// atOnce says how many dials are in progress at most.
func atOnce(conc int) string {
	if conc <= 0 {
		return "all at once"
	}
	return fmt.Sprintf("%d at a time", conc)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func fmtMS(v float64) string {
	if v < 0 {
		return "not within the bound"
	}
	return fmt.Sprintf("%.0f ms", v)
}

// errNoPeers is returned when the peers process ended early.
var errNoPeers = errors.New("scale: the peers process ended early")
