//go:build linux

package partition

import (
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"
)

func TestRunPatternSelectsExactlyOneTest(t *testing.T) {
	for name, others := range map[string][]string{
		"TestA":            {"TestAB", "TestXA", "TestA/sub"},
		"TestA/sub_case":   {"TestA/sub_case2", "TestA/xsub_case", "TestB/sub_case"},
		"TestA/x.y#01":     {"TestA/xzy#01", "TestA/x.y#011"},
		"TestA/b/c":        {"TestA/b/cc", "TestA/bb/c"},
		"TestA/(paren)[x]": {"TestA/paren"},
	} {
		pattern := runPattern(name)
		if !matches(pattern, name) {
			t.Errorf("pattern %q does not select %q", pattern, name)
		}
		for _, o := range others {
			if matches(pattern, o) {
				t.Errorf("pattern %q selects %q too", pattern, o)
			}
		}
	}
}

// matches applies a -test.run pattern as the testing package does: level
// by level, a level of the name with no pattern element matching anything.
func matches(pattern, name string) bool {
	pats, elems := strings.Split(pattern, "/"), strings.Split(name, "/")
	if len(elems) < len(pats) {
		return false // a parent of the selected test: run, but not selected
	}
	for i, p := range pats {
		if !regexp.MustCompile(p).MatchString(elems[i]) {
			return false
		}
	}
	return len(elems) == len(pats)
}

func TestCheckNamespaceRefusesTheParentsNamespace(t *testing.T) {
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Skip(err)
	}
	t.Setenv(envHostNetns, self)
	if err := checkNamespace(); !errors.Is(err, ErrNotIsolated) {
		t.Fatalf("checkNamespace() in the namespace recorded as the host's = %v; want ErrNotIsolated", err)
	}
	if _, err := DropPort(9); !errors.Is(err, ErrNotIsolated) {
		t.Fatalf("DropPort in the namespace recorded as the host's = %v; want ErrNotIsolated", err)
	}
}
