package scale

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// WriteTable writes results side by side, one column per system, one row
// per figure.
func WriteTable(w io.Writer, results []*Result) error {
	if len(results) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	head := []string{""}
	for _, r := range results {
		head = append(head, r.System)
	}
	row := func(name string, f func(r *Result) string) {
		cells := []string{name}
		for _, r := range results {
			cells = append(cells, f(r))
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t")+"\t")
	}
	fmt.Fprintln(tw, strings.Join(head, "\t")+"\t")
	row("peers registered", func(r *Result) string { return fmt.Sprintf("%d of %d", r.Connected, r.Peers) })
	row("connect, dialled "+atOnce(results[0].DialConcurrency), func(r *Result) string {
		if r.Connected < r.Peers {
			return fmt.Sprintf("not all in %.0f s (%d retries, %d redials)", r.ConnectSec, r.DialRetries, r.Redials)
		}
		return fmt.Sprintf("%.2f s (%d retries, %d redials)", r.ConnectSec, r.DialRetries, r.Redials)
	})
	row("CPU while idle, of one core", func(r *Result) string {
		if r.IdleSec == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f%%", 100*r.CPUCore)
	})
	row("heap+stacks per peer", func(r *Result) string {
		if r.IdleSec == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f KiB", r.BytesPerPeer/1024)
	})
	row("  heap / stacks", func(r *Result) string {
		if r.IdleSec == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f / %.1f KiB", r.HeapPerPeer/1024, r.StackPerPeer/1024)
	})
	row("goroutines per peer", func(r *Result) string {
		if r.IdleSec == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", r.GoroutinesPerPeer)
	})
	row("lost while idle (false)", func(r *Result) string { return fmt.Sprint(r.IdleLost) })
	silenced := func(f func(r *Result) string) func(r *Result) string {
		return func(r *Result) string {
			if r.BoundMS == 0 {
				return "-"
			}
			return f(r)
		}
	}
	row("a silenced peer noticed, p50 / max", silenced(func(r *Result) string {
		if r.DetectMS < 0 {
			return detect(r.DetectMS, r.BoundMS)
		}
		return fmt.Sprintf("%.0f / %.0f ms (of %d)", r.DetectMS, r.DetectMaxMS, r.DetectCount)
	}))
	row("  others lost meanwhile", silenced(func(r *Result) string { return fmt.Sprint(r.DetectOthers) }))
	row("mass failure: silenced at once", silenced(func(r *Result) string {
		if r.MassSilenced == 0 {
			return "-"
		}
		return fmt.Sprint(r.MassSilenced)
	}))
	mass := func(f func(r *Result) string) func(r *Result) string {
		return silenced(func(r *Result) string {
			if r.MassSilenced == 0 {
				return "-"
			}
			return f(r)
		})
	}
	row("  all noticed within", mass(func(r *Result) string {
		if r.MassMaxMS < 0 {
			return fmt.Sprintf("%d of %d in %.0f s", r.MassNoticed, r.MassSilenced, r.BoundMS/1000)
		}
		return fmt.Sprintf("%.0f ms (p50 %.0f)", r.MassMaxMS, r.MassP50MS)
	}))
	row("  other peers lost", mass(func(r *Result) string { return fmt.Sprint(r.MassOthers) }))
	row("  log lines at Warn+", mass(func(r *Result) string { return fmt.Sprint(r.MassWarnLines) }))
	row("  incident files", mass(func(r *Result) string { return fmt.Sprint(r.MassIncidents) }))
	row("kernel backlog drops (host)", func(r *Result) string {
		if r.BacklogDrops < 0 {
			return "-"
		}
		return fmt.Sprint(r.BacklogDrops)
	})
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range results {
		if r.NoSilence != "" {
			fmt.Fprintf(w, "%s: %s\n", r.System, r.NoSilence)
		}
		if r.BacklogDrops > 0 {
			fmt.Fprintf(w, "%s: the kernel dropped %d packets on full input backlogs during the run (net.core.netdev_max_backlog, "+
				"a host-wide setting): some connections may have looked silent\n", r.System, r.BacklogDrops)
		}
	}
	return nil
}

func detect(v, bound float64) string {
	if v < 0 {
		return fmt.Sprintf("not within %.0f s", bound/1000)
	}
	return fmt.Sprintf("%.0f ms", v)
}
