//go:build !race

package peer

// massPeers is how many peers TestMassEviction registers.
const massPeers = 10_000
