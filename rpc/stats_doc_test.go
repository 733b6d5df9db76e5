package rpc

import (
	"go/doc"
	"go/parser"
	"go/token"
	"io/fs"
	"strings"
	"testing"
)

// Stats' doc tells its cumulative counters from its current values.
func TestStatsDocTellsCountersFromCurrentValues(t *testing.T) {
	fset := token.NewFileSet()
	pkgs, err := parser.ParseDir(fset, ".", func(fi fs.FileInfo) bool {
		return !strings.HasSuffix(fi.Name(), "_test.go")
	}, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	var d string
	for _, p := range pkgs {
		for _, ty := range doc.New(p, "rpc", 0).Types {
			if ty.Name == "Stats" {
				d = ty.Doc
			}
		}
	}
	if strings.Contains(d, "Every field is cumulative") || !strings.Contains(d, "cumulative") || !strings.Contains(d, "current") {
		t.Fatalf("Stats' doc: %q; want the cumulative counters told from the current values", d)
	}
	for _, f := range []string{"Outstanding", "Serving", "LastReceived"} {
		if !strings.Contains(d, f) {
			t.Errorf("Stats' doc does not say what %s is", f)
		}
	}
}
