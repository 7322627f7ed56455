package bench

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteText prints the report and the recommendation for w as an
// operator reads them.
func WriteText(out io.Writer, rep *Report, rates Rates, w Workload, rec Recommendation) error {
	var b strings.Builder
	h := rep.Host
	fmt.Fprintf(&b, "host: %d CPU(s) %s, %s memory, kernel %s, CRIU %s, load %.2f\n",
		h.CPUs, h.CPUModel, FormatBytes(h.Memory), h.Kernel, h.CRIU, h.Load1)
	c := rep.Checkpoint
	fmt.Fprintf(&b, "\nmeasured (median of %d round(s), synthetic app of %s):\n", rep.Rounds, FormatBytes(rep.Size))
	tw := tabwriter.NewWriter(&b, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "  checkpoint speed\t%s of memory dumped (CRIU memdump %s, frozen %s; the app stopped %s)\n",
		FormatRate(rep.DumpRate()), ms(c.MemDump.D()), ms(c.CRIUFrozen.D()), ms(c.Freeze.D()))
	fmt.Fprintf(tw, "  epoch of all-new memory\t%s to a committed epoch (PRM %s, of which store %s)\n",
		ms(c.Capture.D()), ms(c.PRM.D()), ms(c.Ingest.D()))
	fmt.Fprintf(tw, "  incremental epoch\t%s stored, %s on the wire after %d pages rewritten (full epoch: %s, %s)\n",
		FormatBytes(c.IncrStored), FormatBytes(c.IncrWire), c.DirtiedPages, FormatBytes(c.FullStored), FormatBytes(c.FullWire))
	if rep.Bare != nil {
		fmt.Fprintf(tw, "  bare criu dump\tfrozen %s, %s in all: freeze ratio %.2f, capture ratio %.2f\n",
			ms(rep.Bare.Frozen.D()), ms(rep.Bare.Wall.D()), ratio(c.Freeze.D(), rep.Bare.Frozen.D()), ratio(c.Capture.D(), rep.Bare.Wall.D()))
	}
	fmt.Fprintf(tw, "  hashing (xxh3)\t%s on %d core(s), %s on one\n", FormatRate(rep.Hash.AllCores), h.CPUs, FormatRate(rep.Hash.OneCore))
	fmt.Fprintf(tw, "  LZ4\t%s on %d core(s), %s on one, to %.0f%% of the size\n", FormatRate(rep.LZ4.AllCores), h.CPUs, FormatRate(rep.LZ4.OneCore), 100*rep.LZ4Ratio)
	fmt.Fprintf(tw, "  disk (fsynced)\t%s\n", FormatRate(rep.Disk))
	if rep.Link != nil {
		fmt.Fprintf(tw, "  link to the clones\t%s\n", rep.Link.describe())
	} else if rates.Link > 0 {
		fmt.Fprintf(tw, "  link to the clones\t%s (given, not measured)\n", FormatRate(rates.Link))
	} else {
		fmt.Fprintf(tw, "  link to the clones\tunknown (not measured; give --link-rate)\n")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(&b, "\nfor an app of %s rewriting %.2g%% of its pages per second:\n", FormatBytes(w.AppSize), 100*w.DirtyRate)
	fmt.Fprintf(&b, "  recommended: --interval %v --replicas %d\n", rec.Interval, rec.Replicas)
	fmt.Fprintf(&b, "  per epoch: %s changed, %s to each clone; dominated by %s, interval set by the %s budget\n",
		FormatBytes(rec.ChangedBytes), FormatBytes(rec.WireBytes), rec.Dominant, rec.LimitedBy)
	tw = tabwriter.NewWriter(&b, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  cost\ttime per epoch\tof its budget")
	for _, c := range rec.Costs {
		if c.Time == 0 {
			fmt.Fprintf(tw, "  %s\t-\t-\n", c.Cost)
			continue
		}
		fmt.Fprintf(tw, "  %s\t%s\t%.0f%%\n", c.Cost, ms(c.Time), 100*c.Budget)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, n := range rec.Notes {
		fmt.Fprintf(&b, "  note: %s\n", n)
	}
	_, err := io.WriteString(out, b.String())
	return err
}

func ratio(a, b time.Duration) float64 {
	if b <= 0 {
		return 0
	}
	return float64(a) / float64(b)
}
