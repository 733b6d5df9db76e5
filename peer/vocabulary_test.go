package peer

import (
	"go/ast"
	"go/doc"
	"go/parser"
	"go/token"
	"io/fs"
	"strings"
	"testing"
)

// packageDoc returns the documentation of the package in the current
// directory, test files aside.
func packageDoc(t *testing.T) *doc.Package {
	t.Helper()
	fset := token.NewFileSet()
	pkgs, err := parser.ParseDir(fset, ".", func(fi fs.FileInfo) bool {
		return !strings.HasSuffix(fi.Name(), "_test.go")
	}, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pkgs {
		return doc.New(p, "peer", 0)
	}
	t.Fatal("no package")
	return nil
}

// One word per state: "suspect" is a peer that has not answered a probe
// within its adaptive timeout; "overdue" is a call slower than the hedge
// delay. The docs of each say their own word, and not the other's.
func TestOneWordPerState(t *testing.T) {
	pkg := packageDoc(t)
	docs := map[string]string{}
	for _, ty := range pkg.Types {
		for _, m := range ty.Methods {
			docs[ty.Name+"."+m.Name] = m.Doc
		}
		for _, v := range ty.Consts {
			for _, spec := range v.Decl.Specs {
				vs := spec.(*ast.ValueSpec)
				for _, name := range vs.Names {
					docs[name.Name] = vs.Doc.Text()
				}
			}
		}
	}
	for _, c := range []struct{ name, word, not string }{
		{"Peer.Suspect", "suspect", "overdue"},
		{"Suspected", "suspect", "overdue"},
		{"Recovered", "suspect", "overdue"},
		{"Peer.Overdue", "hedge delay", "is suspect"},
	} {
		d := strings.ToLower(strings.Join(strings.Fields(docs[c.name]), " "))
		if d == "" {
			t.Errorf("%s: no doc", c.name)
			continue
		}
		if !strings.Contains(d, c.word) || strings.Contains(d, c.not) {
			t.Errorf("%s says %q; want %q and not %q", c.name, docs[c.name], c.word, c.not)
		}
	}
}
