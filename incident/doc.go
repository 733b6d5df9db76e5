// Package incident is tether's logging: zap cores that never block the
// caller and never grow without bound, and incident reports that collapse a
// storm of failures into one file.
//
// Two cores do the work, and are meant to be used together:
//
//   - Async wraps any zapcore.Core. Write snapshots the entry and its fields
//     in the caller's goroutine and queues it; one goroutine writes the queue
//     to the wrapped core. The queue is bounded in entries and in bytes; when
//     it is full, low levels are dropped first, each loss is counted, and a
//     later "N entries lost (seq A..B)" notice says what went missing. Every
//     entry carries a sequence number, so a loss is visible as a gap.
//   - Recorder remembers recent entries in per-level rings. A trigger (by
//     default an Error) opens an incident: the history, the trigger, and the
//     entries of the following few seconds go to one JSON-lines file, written
//     off the caller's path. Further triggers in that window fold into the
//     same incident (counted, their peers listed), and a rate limit keeps a
//     storm from writing more.
//
// Intended use:
//
//	async := incident.Async(existing.Core())
//	defer async.Close()
//	rec, err := incident.NewRecorder(dir)
//	if err != nil {
//		return err
//	}
//	defer rec.Close()
//	log := zap.New(zapcore.NewTee(async, rec))
//	log.Warn("peer evicted", zap.String(incident.PeerKey, id)) // never blocks
//	log.Error("write failed", zap.String(incident.PeerKey, id)) // opens an incident
//
// Foolscap's level names are kept as constants (Noisy, Operational, Unusual,
// Weird, Scary, ...) of type zapcore.Level.
package incident
