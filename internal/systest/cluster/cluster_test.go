package cluster

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherrpc/tether/internal/ttest"
	"github.com/tetherrpc/tether/partition"
)

// hosts is the size of the LAN.
const hosts = 20

// fleet is the node processes, one per host, and what they told.
type fleet struct {
	lan   *partition.LAN
	procs []*ttest.Child
	ids   []string

	mu    sync.Mutex
	state []*nodeState
	stats chan [3]int // host, warn, info
	wake  chan struct{}
}

// nodeState is what one node told: its references and members now, and
// the time of each event by kind and ID.
type nodeState struct {
	conns   map[string]int // live references by ID: a replaced one ends after its successor began
	members map[string]bool
	last    map[string]time.Time // "E id", "J id"... the latest
	count   map[string]int       // by kind
}

func (f *fleet) read(i int) {
	for {
		line, err := f.procs[i].Out.ReadString('\n')
		if err != nil {
			return
		}
		fs := strings.Fields(line)
		if len(fs) == 0 {
			continue
		}
		f.mu.Lock()
		st := f.state[i]
		switch fs[0] {
		case "ready":
			f.ids[i] = fs[1]
		case "C", "E", "J", "D":
			ns, _ := strconv.ParseInt(fs[2], 10, 64)
			st.last[fs[0]+" "+fs[1]] = time.Unix(0, ns)
			st.count[fs[0]]++
			if fs[0] == "E" && len(fs) > 3 && fs[3] != "retired" {
				st.count["lost"]++
			}
			switch fs[0] {
			case "C":
				st.conns[fs[1]]++
			case "E":
				st.conns[fs[1]]--
			case "J":
				st.members[fs[1]] = true
			case "D":
				delete(st.members, fs[1])
			}
		case "S":
			w, _ := strconv.Atoi(fs[1])
			in, _ := strconv.Atoi(fs[2])
			f.stats <- [3]int{i, w, in}
		}
		f.mu.Unlock()
	}
}

// wait polls cond, under the fleet's lock, until it holds or d passes.
func (f *fleet) wait(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	t0 := time.Now()
	for {
		f.mu.Lock()
		ok := cond()
		f.mu.Unlock()
		if ok {
			return time.Since(t0)
		}
		if time.Since(t0) > d {
			f.mu.Lock()
			gaps := f.gaps()
			f.mu.Unlock()
			t.Fatalf("not within %v: %s (%s)", d, what, gaps)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// whole reports whether every node in group is connected to, and a member
// with, every other of group. f.mu is held.
func (f *fleet) whole(group []int) bool {
	for _, i := range group {
		for _, j := range group {
			if i != j && (f.state[i].conns[f.ids[j]] == 0 || !f.state[i].members[f.ids[j]]) {
				return false
			}
		}
	}
	return true
}

// gaps says which pairs are not connected, or not members, for a failure
// message. f.mu is held.
func (f *fleet) gaps() string {
	var out []string
	for i := range f.state {
		for j := range f.state {
			if i == j {
				continue
			}
			if f.state[i].conns[f.ids[j]] == 0 {
				out = append(out, fmt.Sprintf("%d-/->%d", i, j))
			}
			if !f.state[i].members[f.ids[j]] {
				out = append(out, fmt.Sprintf("%d-?->%d", i, j))
			}
		}
	}
	if len(out) > 40 {
		out = append(out[:40], fmt.Sprintf("and %d more", len(out)-40))
	}
	return strings.Join(out, " ")
}

// warns returns each node's log lines at Warn and above so far.
func (f *fleet) warns(t *testing.T) []int {
	t.Helper()
	for _, p := range f.procs {
		fmt.Fprintln(p.Stdin, "stats")
	}
	out := make([]int, len(f.procs))
	for range f.procs {
		select {
		case s := <-f.stats:
			out[s[0]] = s[1]
		case <-time.After(10 * time.Second):
			t.Fatal("a node did not report its log counts")
		}
	}
	return out
}

func sum(xs []int) int {
	n := 0
	for _, x := range xs {
		n += x
	}
	return n
}

func span(a, b int) []int {
	var out []int
	for i := a; i < b; i++ {
		out = append(out, i)
	}
	return out
}

// startFleet starts a node on each host: host 0 first, then the others,
// joining through hosts 0, 1 and 2.
func startFleet(t *testing.T, lan *partition.LAN) *fleet {
	f := &fleet{lan: lan, ids: make([]string, hosts), stats: make(chan [3]int, hosts)}
	for range hosts {
		f.state = append(f.state, &nodeState{conns: map[string]int{}, members: map[string]bool{}, last: map[string]time.Time{}, count: map[string]int{}})
	}
	var seeds []string
	for i := range 3 {
		seeds = append(seeds, fmt.Sprintf("%s:%d", lan.Host(i).Addr(), gossipPort))
	}
	for i := range hosts {
		own := lan.Host(i).Addr().String()
		var s []string
		for _, seed := range seeds {
			if i > 0 && !strings.HasPrefix(seed, own+":") {
				s = append(s, seed)
			}
		}
		role := childRole + own
		if len(s) > 0 {
			role += " " + strings.Join(s, ",")
		}
		f.procs = append(f.procs, startInHost(t, lan.Host(i), role))
		go f.read(i)
		if i == 0 {
			f.wait(t, 30*time.Second, "the first node ready", func() bool { return f.ids[0] != "" })
		}
	}
	return f
}

// TestTwentyHosts: 20 hosts form a cluster within 5 s; a silenced host is
// evicted by all within 1 s (p99; see checkEvictions) and declared dead by
// the gossip, and is whole again after the heal; a rack of 5 cut off is
// evicted on both sides within 1 s (p99), with few log lines, and whole
// again after the heal; 5% packet loss for a minute evicts no one and
// declares no one dead.
func TestTwentyHosts(t *testing.T) {
	if ttest.Race {
		t.Skip("20 node processes with the race detector do not fit a small machine; package cluster's tests cover the logic under -race")
	}
	ttest.SkipShort(t, "20 hosts and a minute of loss")
	lan := partition.LANForTest(t, hosts)
	f := startFleet(t, lan)
	all := span(0, hosts)
	f.wait(t, 30*time.Second, "every node ready", func() bool { return !slices.Contains(f.ids, "") })
	formed := f.wait(t, 30*time.Second, "the cluster whole", func() bool { return f.whole(all) })
	t.Logf("20 hosts: whole %v after the last node started", formed)
	if formed > 5*time.Second {
		t.Errorf("the cluster formed in %v; want within 5 s", formed)
	}

	t.Run("silenced host", func(t *testing.T) {
		const x = 7
		rest := slices.DeleteFunc(span(0, hosts), func(i int) bool { return i == x })
		before := sum(f.warns(t))
		t0 := time.Now()
		heal, err := lan.Silence(x)
		if err != nil {
			t.Fatal(err)
		}
		f.wait(t, 10*time.Second, "every node to evict the silenced host", func() bool {
			for _, i := range rest {
				if f.state[i].conns[f.ids[x]] > 0 {
					return false
				}
			}
			return true
		})
		lat := f.latencies(rest, "E "+f.ids[x], t0)
		f.wait(t, 60*time.Second, "every node to declare the silenced host dead", func() bool {
			for _, i := range rest {
				if f.state[i].members[f.ids[x]] {
					return false
				}
			}
			return true
		})
		t.Logf("silenced host evicted by 19 in p50 %v, max %v; declared dead by all %v after the silence; %d lines at Warn",
			lat[len(lat)/2], lat[len(lat)-1], time.Since(t0).Round(time.Millisecond), sum(f.warns(t))-before)
		checkEvictions(t, "the silenced host", lat)
		if err := heal(); err != nil {
			t.Fatal(err)
		}
		back := f.wait(t, 60*time.Second, "the cluster whole after the heal", func() bool { return f.whole(all) })
		t.Logf("whole again %v after the heal", back.Round(time.Millisecond))
	})

	t.Run("rack cut", func(t *testing.T) {
		rack, rest := span(15, hosts), span(0, 15)
		before := f.warns(t)
		t0 := time.Now()
		heal, err := lan.Split(rack...)
		if err != nil {
			t.Fatal(err)
		}
		f.wait(t, 10*time.Second, "both sides to evict each other", func() bool {
			for _, i := range rack {
				for _, j := range rest {
					if f.state[i].conns[f.ids[j]] > 0 || f.state[j].conns[f.ids[i]] > 0 {
						return false
					}
				}
			}
			return true
		})
		var lat []time.Duration
		for _, i := range rack {
			lat = append(lat, f.latencies(rest, "E "+f.ids[i], t0)...)
		}
		for _, j := range rest {
			lat = append(lat, f.latencies(rack, "E "+f.ids[j], t0)...)
		}
		slices.Sort(lat)
		after := f.warns(t)
		most := 0
		for i := range after {
			most = max(most, after[i]-before[i])
		}
		t.Logf("rack of 5 cut: %d evictions on both sides, p50 %v, p99 %v, max %v; %d lines at Warn in all, at most %d at one node",
			len(lat), quantile(lat, .5), quantile(lat, .99), lat[len(lat)-1], sum(after)-sum(before), most)
		checkEvictions(t, "across the cut", lat)
		if most > 8 {
			t.Errorf("a node logged %d lines at Warn for one rack cut", most)
		}
		f.wait(t, 90*time.Second, "each side to declare the other dead", func() bool {
			for _, i := range rack {
				for _, j := range rest {
					if f.state[i].members[f.ids[j]] || f.state[j].members[f.ids[i]] {
						return false
					}
				}
			}
			return true
		})
		t.Logf("each side declared the other dead %v after the cut", time.Since(t0).Round(time.Millisecond))
		if err := heal(); err != nil {
			t.Fatal(err)
		}
		back := f.wait(t, 60*time.Second, "the cluster whole after the heal", func() bool { return f.whole(all) })
		t.Logf("whole again %v after the heal", back.Round(time.Millisecond))
	})

	t.Run("loss", func(t *testing.T) {
		d := 60 * time.Second
		if s := os.Getenv("CLUSTER_LOSS_FOR"); s != "" {
			if v, err := time.ParseDuration(s); err == nil {
				d = v
			}
		}
		f.mu.Lock()
		e0, d0 := f.counts("lost"), f.counts("D")
		f.mu.Unlock()
		heal, err := lan.Loss(0.05)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(d)
		if err := heal(); err != nil {
			t.Fatal(err)
		}
		f.mu.Lock()
		e, dd := f.counts("lost")-e0, f.counts("D")-d0
		whole := f.whole(all)
		f.mu.Unlock()
		t.Logf("5%% loss for %v: %d evictions, %d members declared dead", d, e, dd)
		if e != 0 || dd != 0 || !whole {
			t.Errorf("5%% loss for %v: %d evictions, %d members declared dead, whole %v; want none", d, e, dd, whole)
		}
	})
}

// checkEvictions holds sorted eviction latencies to the promise: p99
// within 1 s. A sample of 19 has no p99 but its maximum, and on a machine
// of two cores running 20 node processes one eviction in a run may come
// late: so one sample in 19 may exceed the second, none may exceed 2 s.
func checkEvictions(t *testing.T, what string, lat []time.Duration) {
	t.Helper()
	late := 0
	for _, d := range lat {
		if d > time.Second {
			late++
		}
	}
	if p99 := quantile(lat, .99); late > max(1, len(lat)/100) || lat[len(lat)-1] > 2*time.Second {
		t.Errorf("evictions %s: p99 %v, max %v, %d of %d over 1 s; want p99 within 1 s, none over 2 s",
			what, p99, lat[len(lat)-1], late, len(lat))
	}
}

// quantile returns the q-quantile of sorted ds.
func quantile(ds []time.Duration, q float64) time.Duration {
	return ds[min(len(ds)-1, int(float64(len(ds))*q))]
}

// latencies returns, sorted, how long after t0 each node of group last
// had event key ("E ID", ...).
func (f *fleet) latencies(group []int, key string, t0 time.Time) []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []time.Duration
	for _, i := range group {
		if at, ok := f.state[i].last[key]; ok && at.After(t0) {
			out = append(out, at.Sub(t0))
		} else {
			out = append(out, time.Hour) // never: fails the bound
		}
	}
	slices.Sort(out)
	return out
}

// counts sums the events of kind over the fleet. f.mu is held.
func (f *fleet) counts(kind string) int {
	n := 0
	for _, st := range f.state {
		n += st.count[kind]
	}
	return n
}

// startInHost starts this test binary in host h as a node process.
func startInHost(t *testing.T, h *partition.LANHost, role string) *ttest.Child {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := h.Command(context.Background(), exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), ttest.EnvRole+"="+role)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		if _, ok := ttest.Within(done, 10*time.Second); !ok {
			cmd.Process.Kill()
			<-done
		}
	})
	return &ttest.Child{Cmd: cmd, Stdin: stdin, Out: bufio.NewReader(stdout)}
}
