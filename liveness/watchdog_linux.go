package liveness

import (
	"os"
	"syscall"
)

// rssReader reads the resident set from /proc/self/statm, kept open so
// that a sample costs one pread.
type rssReader struct {
	fd   int
	ok   bool
	page uint64
	buf  [128]byte
}

func (r *rssReader) open() error {
	fd, err := syscall.Open("/proc/self/statm", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	r.fd, r.ok, r.page = fd, true, uint64(os.Getpagesize())
	return nil
}

func (r *rssReader) close() {
	if r.ok {
		syscall.Close(r.fd)
		r.ok = false
	}
}

// read returns the resident set in bytes: statm's second field, in pages.
func (r *rssReader) read() (uint64, bool) {
	if !r.ok {
		return 0, false
	}
	n, err := syscall.Pread(r.fd, r.buf[:], 0)
	if err != nil || n <= 0 {
		return 0, false
	}
	return parseStatm(r.buf[:n], r.page)
}
