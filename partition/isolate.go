package partition

import (
	"context"
	"testing"
)

// Isolated runs the calling test in a private network namespace, where
// DropPort and the other kernel-level rules may be used. Call it first:
//
//	func TestSilentPeer(t *testing.T) {
//		if !partition.Isolated(t) {
//			return // ran in its own namespace; the result is already t's
//		}
//		// Here loopback is private to this test.
//	}
//
// In the test process, Isolated re-executes the test binary under
// "unshare -n", running only this test (-test.run '^Name$', with -test.v,
// -test.short and the time left before -test.timeout passed on; -race is
// compiled in), streams the copy's output into t.Log, fails t if the copy
// fails, skips t if the copy skipped, and returns false. In the copy,
// marked by an environment variable, it checks that the namespace is
// private, brings lo up and returns true so the test body runs. Where
// KernelSupport reports an error, Isolated calls t.Skip with it.
//
// Limits: the copy is a new process, so state set up before the call is
// not shared with it. It works for top-level tests and for subtests; for a
// subtest, the code of its parent tests before the t.Run runs again in the
// copy. Tests that call Isolated can run in parallel: each copy gets its
// own namespace. The copy always runs verbosely, so that its verdict can be
// read from its output; that output reaches the terminal as t.Log does, on
// failure or with -v. Benchmarks and fuzz targets are not supported.
func Isolated(t *testing.T) bool {
	t.Helper()
	return isolated(t)
}

// Reexec is Isolated for a main program, such as a demo that wants real
// silent partitions. It re-executes the program, with the same arguments
// and standard streams, under "unshare -n", waits for it and returns false
// with the copy's failure, if any (an *exec.ExitError carries its exit
// code); the caller should then exit. In the copy it brings lo up and
// returns true:
//
//	inside, err := partition.Reexec(ctx)
//	if err != nil {
//		log.Fatal(err)
//	}
//	if !inside {
//		return // the copy in its own namespace has done the work
//	}
//
// Without KernelSupport it returns false and that error. Cancelling ctx
// kills the copy.
func Reexec(ctx context.Context) (inside bool, err error) { return reexec(ctx) }
