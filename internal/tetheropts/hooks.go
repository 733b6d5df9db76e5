package tetheropts

// The functions registered here take the types of the packages that
// register them (this package cannot name them: those packages import
// it), so each is kept as an any and asserted back to its one type on
// use; a mismatch is a programming error caught by any test.
var (
	resumeConn  any // func(*rpc.Conn), set by rpc
	addIncoming any // func(*peer.Registry, *rpc.Conn, string) error, set by peer
)

// SetResumeConn registers the function that resumes a paused connection
// (see SetPaused). Package rpc calls it in its init.
func SetResumeConn[C any](resume func(C)) { resumeConn = resume }

// ResumeConn lets c, made paused, serve. It does nothing on a connection
// not paused, or already resumed.
func ResumeConn[C any](c C) { resumeConn.(func(C))(c) }

// SetAddIncoming registers the function that registers, in a registry, a
// connection that dialed in from addr. Package peer calls it in its init.
func SetAddIncoming[R, C any](add func(r R, c C, addr string) error) { addIncoming = add }

// AddIncoming registers c, which dialed in from addr, in r, and resumes
// it. On error c is closed.
func AddIncoming[R, C any](r R, c C, addr string) error {
	return addIncoming.(func(R, C, string) error)(r, c, addr)
}
