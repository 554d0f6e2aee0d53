package migrate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hypersdk/hypersdk/agent/worker"
	"github.com/hypersdk/hypersdk/proto"
)

// ErrHook: a pre or post hook failed (after its retries). A failed pre hook fails the job
// before anything is copied; a failed post hook fails it with the domain kept.
var ErrHook = errors.New("hook failed")

// hookOutputMax bounds what is kept of a hook's output (its tail goes into the error).
const hookOutputMax = 64 << 10

// hook runs options.hooks.<phase>, if any, with its retries. res is the defined domain
// (post only).
func (j *job) hook(ctx context.Context, phase string, res *proto.JobResult) error {
	hs := j.def.Options.Hooks
	if hs == nil {
		return nil
	}
	h := hs.Pre
	if phase == "post" {
		h = hs.Post
	}
	if h == nil {
		return nil
	}
	facts := proto.HookFacts{Hook: phase, JobID: j.lease.JobID, Attempt: j.lease.Attempt, Agent: j.p.cfg.AgentName,
		VMPath: j.def.VMPath, VCenter: hostOf(j.def.Source.VCenterURL), ScheduleID: j.def.ScheduleID}
	if res != nil {
		facts.DomainName, facts.LibvirtURI = res.DomainName, res.LibvirtURI
	}
	stage := proto.StagePreparing
	if phase == "post" {
		stage = proto.StageDefining
	}
	what := h.Command
	if what == "" {
		what = redactHookURL(h.URL)
	}
	timeout := time.Duration(h.TimeoutSeconds) * time.Second
	if timeout <= 0 {
		timeout = 5 * time.Minute
	}
	delay := time.Second
	var err error
	for try := 0; try <= h.Retries; try++ {
		if try > 0 {
			select {
			case <-ctx.Done():
				return errCancelled(ctx, phase+" hook")
			case <-time.After(delay):
			}
			delay *= 2
		}
		j.report(proto.Progress{Stage: stage, Message: fmt.Sprintf("%s hook %s (try %d of %d)", phase, what, try+1, h.Retries+1)})
		var out string
		tctx, cancel := context.WithTimeout(ctx, timeout)
		if h.Command != "" {
			out, err = j.runHookCommand(tctx, h, facts)
		} else {
			out, err = runHookHTTP(tctx, h, facts)
		}
		cancel()
		j.log.Info("hook ran", "hook", phase, "what", what, "try", try+1, "ok", err == nil, "err", err, "output", out)
		if hl, ok := j.rep.(worker.HookLogger); ok {
			outcome := "ok"
			if err != nil {
				outcome = "failed: " + err.Error()
			}
			hl.HookRan(phase, outcome, out)
		}
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return errCancelled(ctx, phase+" hook")
		}
		if errors.Is(err, errHookNotAllowed) {
			break // no retry makes a command appear in hooks_dir
		}
	}
	return fmt.Errorf("%w: %s hook %s: %v", ErrHook, phase, what, err)
}

var errHookNotAllowed = errors.New("not allowed on this agent")

// runHookCommand runs an executable of the agent's hooks dir with the job's facts in its
// environment (and nothing of the agent's own environment beyond PATH and LANG).
func (j *job) runHookCommand(ctx context.Context, h *proto.Hook, f proto.HookFacts) (string, error) {
	dir := j.p.cfg.HooksDir
	if dir == "" {
		return "", fmt.Errorf("command hooks are %w (set hooks_dir in the agent's config)", errHookNotAllowed)
	}
	// The name is a plain file name (proto checks it); resolving symlinks keeps a link in
	// the dir from pointing the agent outside it.
	path := filepath.Join(dir, filepath.Base(h.Command))
	real, err := filepath.EvalSymlinks(path)
	if err == nil {
		var rdir string
		if rdir, err = filepath.EvalSymlinks(dir); err == nil && !strings.HasPrefix(real, rdir+string(filepath.Separator)) {
			err = fmt.Errorf("%s leads outside %s: %w", h.Command, dir, errHookNotAllowed)
		}
	}
	if err != nil {
		if errors.Is(err, errHookNotAllowed) {
			return "", err
		}
		return "", fmt.Errorf("%s is not in %s: %w", h.Command, dir, errHookNotAllowed)
	}
	cmd := exec.CommandContext(ctx, real, h.Args...)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
		"HYPERSDK_HOOK=" + f.Hook, "HYPERSDK_JOB_ID=" + f.JobID, "HYPERSDK_ATTEMPT=" + strconv.Itoa(f.Attempt),
		"HYPERSDK_AGENT=" + f.Agent, "HYPERSDK_VM_PATH=" + f.VMPath, "HYPERSDK_VCENTER=" + f.VCenter,
		"HYPERSDK_DOMAIN_NAME=" + f.DomainName, "HYPERSDK_LIBVIRT_URI=" + f.LibvirtURI, "HYPERSDK_SCHEDULE_ID=" + f.ScheduleID}
	var out tailBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 5 * time.Second // a hook's children holding the pipes open
	err = cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("timed out: %w", ctx.Err())
	}
	if err != nil {
		return out.String(), fmt.Errorf("%v: %s", err, lastLine(out.String()))
	}
	return out.String(), nil
}

// runHookHTTP posts the job's facts; a 2xx answer is success.
func runHookHTTP(ctx context.Context, h *proto.Hook, f proto.HookFacts) (string, error) {
	body, _ := json.Marshal(f)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.URL, bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "hypersdk-agent hook")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", errors.New(strings.ReplaceAll(err.Error(), h.URL, redactHookURL(h.URL)))
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, hookOutputMax))
	if resp.StatusCode/100 != 2 {
		return string(b), fmt.Errorf("answered %s: %s", resp.Status, lastLine(string(b)))
	}
	return string(b), nil
}

// redactHookURL drops a URL's query (tokens travel there) for messages.
func redactHookURL(raw string) string {
	if i := strings.IndexAny(raw, "?#"); i >= 0 {
		return raw[:i]
	}
	return raw
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if len(s) > 300 {
		s = s[len(s)-300:]
	}
	return s
}

// tailBuffer keeps the last hookOutputMax bytes written.
type tailBuffer struct{ b []byte }

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > hookOutputMax {
		t.b = t.b[len(t.b)-hookOutputMax:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.b) }

// hookNames lists the executables of the hooks dir, for the agent's facts.
func (p *Pipeline) hookNames() []string {
	out := []string{}
	if p.cfg.HooksDir == "" {
		return out
	}
	entries, err := os.ReadDir(p.cfg.HooksDir)
	if err != nil {
		return out
	}
	for _, e := range entries {
		if info, err := e.Info(); err == nil && !e.IsDir() && info.Mode()&0o111 != 0 || e.Type()&os.ModeSymlink != 0 {
			out = append(out, e.Name())
		}
	}
	return out
}
