// Package logport serves a node's log stream to subscribers over tether's
// own rpc, as foolscap's logport did, without foolscap's failure (ticket
// 72): a log gatherer six times slower than its node made the node's queue
// grow to 3 GB in three hours, until it crashed. Here a slow subscriber
// costs the node a bounded amount of memory, never more; what it cannot
// take is dropped, counted exactly, and shown to it as a sequence gap with
// a loss notice ("N entries lost (seq a..b)").
//
// # Node side
//
//	port := logport.New(logport.WithIncidents(recorder))
//	defer port.Close()
//	core := incident.Async(zapcore.NewTee(fileCore, recorder, port.Core()))
//	n, err := tether.Listen(addr, tether.WithLogger(zap.New(core)))
//	port.Register(n) // log.subscribe, log.incidents, log.incident
//
// Port.Core is a zapcore.Core (the "tap"). Behind incident.Async it runs on
// Async's writer goroutine, off every caller's path; it never blocks there
// either: it encodes each entry once, with zap's JSON encoder into a pooled
// buffer, and copies it into the port's ring under a short lock.
//
// # Subscriber side
//
//	pos, err := logport.Subscribe(ctx, p, func(e logport.Entry) {
//		if e.IsLoss() {
//			fmt.Println(e.Lost) // "120 entries lost (seq 881..1000)"
//			return
//		}
//		os.Stdout.Write(e.JSON) // one JSON object and its "\n"
//	})
//	// later, after a reconnection: continue where it stopped
//	pos, err = logport.Subscribe(ctx, p2, fn, logport.From(pos))
//
// ListIncidents and FetchIncident list and fetch the node's incident files
// (incident-*.json); examples/gatherer does all of it for a set of nodes.
//
// # Design
//
// One ring, many cursors. The port keeps entries in one ring of 64 KiB
// chunks, each entry stored once, already framed for the wire; every
// subscriber has a cursor into it. The brief suggested a bounded queue per
// subscriber; the ring is better on every count that matters here. The
// producer's work per entry is one encode and one copy whatever the number
// of subscribers (no per-subscriber push), memory is one budget for the
// port rather than a budget per subscriber (an entry waiting for four
// subscribers is held once), a sender writes a whole run of entries
// straight from a chunk with one Write (no copy, no allocation), and
// losses come in whole chunks, so a stalled subscriber that resumes gets
// one loss notice for the whole range rather than one per entry. Without
// WithHistory a chunk is freed as soon as every cursor has passed it, so a
// port whose subscribers keep up holds about one chunk, and one with no
// subscribers holds nothing and encodes nothing.
//
// Budget. The budget (default DefaultBudget, 4 MiB, at least MinBudget)
// bounds everything the port allocates for entries: chunks in the ring,
// one spare, and chunks that senders are still writing from after they
// left the ring. When the producer needs a chunk and the budget is spent it
// drops the oldest: every cursor in it moves to the next chunk, and the
// entries it skipped are counted as dropped and queued as a loss notice.
// Foolscap bounded its queue at 2,000 entries; a count does not bound
// memory (an entry is 200 bytes or 60 KiB), so the budget is in bytes.
// Entries above MaxEntrySize become stubs (see MaxEntrySize).
//
// Credit. The subscriber grants credit in entries (GRANT frames); the port
// sends at most that many before the next grant. Credit is what makes the
// port, not the network, decide what a slow subscriber loses: without it
// the sender would block in Write on the stream's flow-control window and
// the loss would happen in the same place, but the subscriber could not
// pause (grant nothing) or bound what it must take. The subscriber's window
// is DefaultWindow (1024) rather than foolscap's 10 in flight: see
// DefaultWindow. Over loopback a 10-entry window drains about 180,000
// entries a second, a 1024-entry window 3.8 million (BenchmarkThroughput);
// over a 50 ms link 10 in flight would mean 200 a second. Grants above the
// port's limit (DefaultMaxCredit) are protocol violations.
//
// Accounting. For each subscription, and summed for the port, Produced ==
// Delivered + Dropped + Queued holds exactly in every snapshot (Stats,
// Subscribers); when a subscription ends its queue is dropped, so then
// Produced == Delivered + Dropped. The subscriber sees exactly the
// delivered entries, and loss notices for exactly the dropped ones
// (TestTicket72Replay checks both sides).
//
// Sequence numbers. The port numbers every entry written to its core,
// whoever listens, so that a subscriber resuming with From sees what it
// missed as a gap. The number is in the frame and in the JSON as the first
// key, "port_seq" (SeqKey); an entry that came through incident.Async also
// has Async's own "seq", whose gaps are Async's losses. A port is
// identified by a random epoch, so a subscriber resuming against a
// restarted node starts that node's numbering afresh.
//
// Overload notices. WithOverloadNotice sets a hook called when subscribers
// lose entries to the budget, at most once an hour (OverloadInterval, with
// an injectable clock), counting every entry lost since the last notice.
// It runs on a goroutine of its own, never on the producer's path.
//
// Misbehaving subscribers. Garbage, a frame out of place, a grant of 0 or
// past the limit (2^63, say) end that subscription with an error frame
// that says what was wrong (code CodeProtocol) and one Warn line; the
// connection and the other subscriptions go on. The handshake is bounded
// by HandshakeTimeout, concurrent subscriptions by WithMaxSubscribers.
//
// Incident files are fetched by name over a stream (files may exceed rpc's
// message limit); names must match incident-*.json with no path separator
// and no "..", and files are opened through an os.Root confined to the
// incident directory, so a symlink out of it is not followed either.
//
// The wire format is in spec.md beside this file.
package logport
