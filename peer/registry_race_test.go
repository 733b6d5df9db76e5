//go:build race

package peer

// massPeers is how many peers TestMassEviction registers: fewer under the
// race detector, which makes each of them many times dearer.
const massPeers = 2_000
