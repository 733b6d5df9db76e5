package partition

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

func isolated(t *testing.T) bool {
	t.Helper()
	if name, ok := os.LookupEnv(envTest); ok {
		if name != t.Name() && !strings.HasPrefix(name, t.Name()+"/") && !strings.HasPrefix(t.Name(), name+"/") {
			t.Fatalf("partition: the isolated copy for %s reached Isolated in %s", name, t.Name())
		}
		if err := enterCopy(); err != nil {
			t.Fatal(err)
		}
		return true
	}
	if err := KernelSupport(); err != nil {
		t.Skip(err)
	}
	runCopy(t)
	return false
}

// enterCopy prepares a re-executed copy: it must be in a private namespace,
// whose loopback it brings up.
func enterCopy() error {
	if err := checkNamespace(); err != nil {
		return err
	}
	return loopbackUp()
}

// isolatedCommand returns a command running program under "unshare -n",
// marked with the host's network namespace.
func isolatedCommand(ctx context.Context, program string, args ...string) (*exec.Cmd, error) {
	unshare, err := findTool("unshare")
	if err != nil {
		return nil, fmt.Errorf("partition: %w", err)
	}
	host, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		return nil, fmt.Errorf("partition: %w", err)
	}
	cmd := exec.CommandContext(ctx, unshare, append([]string{"-n", "--", program}, args...)...)
	cmd.Env = append(os.Environ(), envHostNetns+"="+host)
	cmd.WaitDelay = time.Second
	return cmd, nil
}

// runCopy runs t's test again in a copy of the test binary in a new network
// namespace, and gives t the copy's verdict.
func runCopy(t *testing.T) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("partition: cannot find the test binary: %v", err)
	}
	args := []string{"-test.run=" + runPattern(t.Name()), "-test.count=1", "-test.v=true"}
	if testing.Short() {
		args = append(args, "-test.short")
	}
	if f := flag.Lookup("test.gocoverdir"); f != nil && f.Value.String() != "" {
		args = append(args, "-test.gocoverdir="+f.Value.String())
	}
	ctx := context.Background()
	if deadline, ok := t.Deadline(); ok {
		// The copy times out first, so that its own report (with its
		// goroutines) reaches this log.
		args = append(args, "-test.timeout="+(time.Until(deadline)*9/10).String())
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	cmd, err := isolatedCommand(ctx, exe, args...)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Env = append(cmd.Env, envTest+"="+t.Name())
	if race := os.Getenv("GORACE"); !strings.Contains(race, "atexit_sleep_ms") {
		// A race-enabled binary otherwise sleeps a second before exiting.
		// The copy's races are reported by then: its tests have ended.
		cmd.Env = append(cmd.Env, "GORACE="+strings.TrimSpace(race+" atexit_sleep_ms=0"))
	}
	out := &lineLog{t: t}
	cmd.Stdout, cmd.Stderr = out, out
	err = cmd.Run()
	out.flush()
	switch {
	case err != nil:
		t.Fatalf("partition: isolated run of %s failed: %v", t.Name(), err)
	case out.saw("--- SKIP: " + t.Name() + " "):
		t.Skipf("partition: %s skipped in its network namespace (reason above)", t.Name())
	case !out.saw("--- PASS: " + t.Name() + " "):
		t.Fatalf("partition: isolated run of %s reported no result; is the name unique?", t.Name())
	}
}

// runPattern returns the -test.run pattern that selects exactly the test
// with this name, level by level.
func runPattern(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	return strings.Join(parts, "/")
}

// lineLog passes a copy's output to t.Log line by line and remembers the
// lines for the verdict.
type lineLog struct {
	t       *testing.T
	mu      sync.Mutex
	partial []byte
	lines   []string
}

func (l *lineLog) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.partial = append(l.partial, b...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			return len(b), nil
		}
		l.emit(string(l.partial[:i]))
		l.partial = l.partial[i+1:]
	}
}

func (l *lineLog) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.partial) > 0 {
		l.emit(string(l.partial))
		l.partial = nil
	}
}

func (l *lineLog) emit(line string) {
	l.lines = append(l.lines, line)
	l.t.Log("│ " + line)
}

// saw reports whether a line, leading space trimmed, starts with prefix.
func (l *lineLog) saw(prefix string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if strings.HasPrefix(strings.TrimLeft(line, " \t"), prefix) {
			return true
		}
	}
	return false
}

func reexec(ctx context.Context) (bool, error) {
	if os.Getenv(envHostNetns) != "" && os.Getenv(envTest) == "" {
		if err := enterCopy(); err != nil {
			return false, err
		}
		return true, nil
	}
	if err := KernelSupport(); err != nil {
		return false, err
	}
	exe, err := os.Executable()
	if err != nil {
		return false, fmt.Errorf("partition: cannot find this program: %w", err)
	}
	cmd, err := isolatedCommand(ctx, exe, os.Args[1:]...)
	if err != nil {
		return false, err
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return false, fmt.Errorf("partition: isolated copy of %s: %w", exe, err)
	}
	return false, nil
}
