// Package systool finds the system programs tether's partitions and scale
// runs use (iptables, tc, ip, unshare, nsenter).
package systool

import (
	"fmt"
	"os"
	"os/exec"
)

// dirs are searched after PATH: root's tools often live in the sbin
// directories, and a user's PATH often lacks them.
var dirs = []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"}

// Find returns the path of the program name, found on PATH or in the sbin
// and bin directories.
func Find(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range dirs {
		p := dir + "/" + name
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found on PATH or in /usr/sbin, /sbin, /usr/bin, /bin", name)
}
