package systool

import (
	"runtime"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestFind(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no /bin or /usr/bin on Windows")
	}
	t.Setenv("PATH", "")
	p, err := Find("sh") // not on the empty PATH; in /bin or /usr/bin
	if err != nil || !strings.HasSuffix(p, "/sh") {
		t.Fatalf("Find(sh) = %q, %v; want a path found in the bin directories", p, err)
	}
	if p, err := Find("no-such-tool-tether"); err == nil || !strings.Contains(err.Error(), "no-such-tool-tether not found") {
		t.Fatalf("Find(no-such-tool-tether) = %q, %v; want a not-found error", p, err)
	}
}
