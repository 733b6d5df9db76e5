package ttest

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"testing"
	"time"
)

// EnvRole names the environment variable that tells a child process
// started by StartChild which part to play.
const EnvRole = "TETHER_TEST_ROLE"

// Role returns the part this process was started to play by StartChild,
// or "" in the test process itself. A test package that starts children
// reads it in an init function, plays the part and exits, so that no test
// runs in the child:
//
//	func init() {
//		if role, ok := strings.CutPrefix(ttest.Role(), "node "); ok {
//			os.Exit(runNode(role))
//		}
//	}
func Role() string { return os.Getenv(EnvRole) }

// A Child is this test binary re-executed in a process of its own, to play
// a part the test cannot play in its own process: a node to pause with a
// signal, an attacker whose CPU and garbage are not the victim's.
type Child struct {
	Cmd   *exec.Cmd
	Stdin io.WriteCloser // closing it is the child's cue to end
	Out   *bufio.Reader  // what the child writes to its standard output
}

// StartChild starts this test binary again with Role set to role, running
// no test, with env added to its environment; its standard error is this
// process's. At the end of the test the child is resumed (it may be
// paused), its stdin is closed, and it is killed if it has not ended
// within 5 s.
func StartChild(t testing.TB, role string, env ...string) *Child {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("ttest: cannot find the test binary: %v", err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(append(os.Environ(), EnvRole+"="+role), env...)
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
	c := &Child{Cmd: cmd, Stdin: stdin, Out: bufio.NewReader(stdout)}
	t.Cleanup(func() {
		c.Resume()
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	return c
}

// ReadLine returns the child's next line of output, without its newline,
// and fails t if there is none.
func (c *Child) ReadLine(t testing.TB) string {
	t.Helper()
	line, err := c.Out.ReadString('\n')
	if err != nil {
		t.Fatalf("ttest: child %v: reading its output: %v (so far %q)", c.Cmd.Args, err, line)
	}
	return line[:len(line)-1]
}

// RunTest runs the test named test of this binary (exactly that one) in a
// child process with env added to its environment, verbosely, as the go
// tool would, and returns its output and its exit error. A race-enabled
// child does not sleep before it exits.
func RunTest(t testing.TB, test string, env ...string) (string, error) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("ttest: cannot find the test binary: %v", err)
	}
	cmd := exec.Command(exe, "-test.run=^"+test+"$", "-test.v", "-test.timeout="+Scaled(30*time.Second).String())
	cmd.Env = append(append(os.Environ(), "GORACE=atexit_sleep_ms=0"), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}
