package ttest

import (
	"github.com/tetherrpc/tether/internal/systool"

	"os"
	"runtime"
	"testing"

	"github.com/tetherrpc/tether/partition"
)

// Each Need function skips the test, saying why, when what it names is
// missing here; a test calls the ones it needs first.

// NeedLinux skips t on any system but Linux.
func NeedLinux(t testing.TB) {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skipf("needs Linux, not %s", runtime.GOOS)
	}
}

// NeedRoot skips t unless it runs as root.
func NeedRoot(t testing.TB) {
	t.Helper()
	if uid := os.Geteuid(); uid != 0 {
		t.Skipf("needs root; running as uid %d", uid)
	}
}

// Tool returns the path of a program, found on PATH or, since root's
// tools often live there and PATH may lack them, in the sbin directories.
func Tool(name string) (string, error) { return systool.Find(name) }

// NeedTool skips t unless the program name can be found (see Tool), and
// returns its path.
func NeedTool(t testing.TB, name string) string {
	t.Helper()
	p, err := Tool(name)
	if err != nil {
		t.Skipf("needs the %s program: %v", name, err)
	}
	return p
}

// NeedIptables skips t without the iptables program, and returns its path.
func NeedIptables(t testing.TB) string { t.Helper(); return NeedTool(t, "iptables") }

// NeedUnshare skips t without the unshare program, and returns its path.
func NeedUnshare(t testing.TB) string { t.Helper(); return NeedTool(t, "unshare") }

// NeedTC skips t without the tc program, and returns its path.
func NeedTC(t testing.TB) string { t.Helper(); return NeedTool(t, "tc") }

// NeedKernelPartitions skips t unless kernel-level partitions can be made
// here (partition.KernelSupport: Linux, root, unshare, iptables, and a
// trial rule accepted), with the reason.
func NeedKernelPartitions(t testing.TB) {
	t.Helper()
	if err := partition.KernelSupport(); err != nil {
		t.Skip(err)
	}
}

// NeedShaping skips t unless partition.LimitRate can work here
// (partition.ShapingSupport: kernel partitions, tc, and a trial token
// bucket filter accepted), with the reason.
func NeedShaping(t testing.TB) {
	t.Helper()
	if err := partition.ShapingSupport(); err != nil {
		t.Skip(err)
	}
}

// SkipShort skips t in -short mode, saying what it would have cost.
func SkipShort(t testing.TB, what string) {
	t.Helper()
	if testing.Short() {
		t.Skipf("-short: %s", what)
	}
}
