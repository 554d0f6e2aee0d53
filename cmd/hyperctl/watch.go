package main

import (
	"fmt"
	"io"
	"math"
	"strings"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/client"
)

// watch follows a job to its end. Exit 0 when it completed, 4 when it failed or was
// cancelled.
func (a *app) watch(id string, poll time.Duration) error {
	v := &progressView{w: a.stdout, tty: a.tty && !a.jsonOut(), quiet: a.jsonOut()}
	j, err := a.client.WatchJob(a.ctx, id, client.WatchOptions{
		PollInterval: poll,
		OnUpdate:     v.update,
		OnMode: func(mode string, why error) {
			if mode == client.ModePolling && why != nil {
				// Said on stderr: stdout stays the job's story.
				fmt.Fprintf(a.stderr, "hyperctl: live updates unavailable (%s); polling every %s\n", oneLine(why.Error()), poll)
			}
		},
	})
	v.end()
	if err != nil {
		return err
	}
	if a.jsonOut() {
		if err := a.printJSON(j); err != nil {
			return err
		}
	} else {
		fmt.Fprintln(a.stdout, summary(j))
	}
	if j.Status != proto.StatusCompleted {
		msg := fmt.Sprintf("job %s %s", j.Definition.ID, j.Status)
		if j.Error != nil && *j.Error != "" {
			msg += ": " + *j.Error
		}
		return &jobEndedError{msg: msg}
	}
	return nil
}

func summary(j proto.Job) string {
	s := fmt.Sprintf("job %s %s", j.Definition.ID, j.Status)
	if j.StartedAt != nil && j.CompletedAt != nil {
		s += " in " + humanDuration(j.CompletedAt.Sub(*j.StartedAt))
	}
	if j.Agent != "" {
		s += " on " + j.Agent
	}
	if j.Result != nil && j.Result.DomainName != "" {
		s += fmt.Sprintf(" (domain %s)", j.Result.DomainName)
	}
	return s
}

// progressView draws a job's progress: one line redrawn in place on a terminal, a line
// per visible change otherwise (logs, CI, pipes).
type progressView struct {
	w     io.Writer
	tty   bool
	quiet bool

	drawn     bool
	lastLine  string
	lastPrint time.Time
	lastPct   float64
	lastStage string

	// rate derived from successive updates when the agent reports none
	prevBytes int64
	prevAt    time.Time
	rate      float64
}

const barWidth = 30

func (v *progressView) update(j proto.Job) {
	if v.quiet {
		return
	}
	p := j.Progress
	rate, eta := v.rateAndETA(j)
	stage := stageOf(j)
	if j.Status.Terminal() {
		stage = string(j.Status)
	}
	line := fmt.Sprintf("%s %6s  %-10s", bar(p.PercentComplete), percent(p.PercentComplete), stage)
	if p.TotalBytes > 0 {
		line += fmt.Sprintf("  %s / %s", humanBytes(p.CurrentBytes), humanBytes(p.TotalBytes))
	}
	if r := humanRate(rate); r != "" && !j.Status.Terminal() {
		line += "  " + r
	}
	if eta > 0 && !j.Status.Terminal() {
		line += "  ETA " + humanDuration(eta)
	}
	if j.Status == proto.StatusPending {
		line = "waiting for an agent"
		if j.PendingReason != "" {
			line += ": " + j.PendingReason
		}
	}
	if v.tty {
		fmt.Fprintf(v.w, "\r\033[K%s", line)
		v.drawn = true
		return
	}
	// Not a terminal: print when the stage changes, every 5 points, or every 10 s.
	now := time.Now()
	if line == v.lastLine || (stage == v.lastStage && p.PercentComplete-v.lastPct < 5 && now.Sub(v.lastPrint) < 10*time.Second &&
		!j.Status.Terminal() && v.lastLine != "") {
		return
	}
	fmt.Fprintln(v.w, line)
	v.lastLine, v.lastStage, v.lastPct, v.lastPrint = line, stage, p.PercentComplete, now
}

// rateAndETA prefers what the agent measured and derives both otherwise.
func (v *progressView) rateAndETA(j proto.Job) (float64, time.Duration) {
	p := j.Progress
	at := j.UpdatedAt
	if at.IsZero() {
		at = time.Now()
	}
	if !v.prevAt.IsZero() && at.After(v.prevAt) && p.CurrentBytes >= v.prevBytes {
		inst := float64(p.CurrentBytes-v.prevBytes) / at.Sub(v.prevAt).Seconds()
		if v.rate == 0 {
			v.rate = inst
		} else {
			v.rate = 0.7*v.rate + 0.3*inst // smooth the bumps of 1 s progress reports
		}
	}
	v.prevBytes, v.prevAt = p.CurrentBytes, at
	rate := p.BytesPerSecond
	if rate <= 0 {
		rate = v.rate
	}
	eta := time.Duration(p.ETASeconds * float64(time.Second))
	if eta <= 0 && rate > 0 && p.TotalBytes > p.CurrentBytes {
		eta = time.Duration(float64(p.TotalBytes-p.CurrentBytes) / rate * float64(time.Second))
	}
	return rate, eta
}

func (v *progressView) end() {
	if v.tty && v.drawn {
		fmt.Fprintln(v.w)
	}
}

func bar(pct float64) string {
	if math.IsNaN(pct) {
		pct = 0
	}
	pct = math.Max(0, math.Min(100, pct))
	full := int(math.Round(pct / 100 * barWidth))
	return "[" + strings.Repeat("#", full) + strings.Repeat(".", barWidth-full) + "]"
}
