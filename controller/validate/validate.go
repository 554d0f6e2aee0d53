// Package validate is pre-flight validation: before a job is stored (POST /jobs/submit) or
// when asked (POST /jobs/validate), the controller reads the VM from its vCenter with the
// job's credentials and looks at the fleet, and says what would stop the migration
// (critical), what would make it lose something (warning) and what is worth knowing (info).
//
//   - rules.go: the rules that need only the vCenter's facts;
//   - fleet.go: the rules about one agent's host, and how the fleet's agents are weighed;
//   - facts.go: asking agents for their host facts (GET /v1/facts on their API).
package validate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vsphere"
)

// Connector logs in to a job's vCenter with the job's credentials (the API's own, so the
// outbound target policy applies).
type Connector func(ctx context.Context, src proto.Source) (*vsphere.Client, error)

// Config wires a Validator. Zero values mean defaults.
type Config struct {
	Connect Connector
	// Agents lists the fleet (nil: no fleet rules, e.g. a controller without gossip).
	Agents func() []proto.AgentInfo
	// Facts asks one agent for its host facts (nil: none asked, gossip view only).
	Facts FactsFunc
	// Timeout bounds one validation call (default 60 s).
	Timeout time.Duration
	Logger  *slog.Logger
}

// Validator runs the checks.
type Validator struct {
	cfg   Config
	log   *slog.Logger
	facts *factsCache
}

// New returns a Validator.
func New(cfg Config) *Validator {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 60 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Connect == nil {
		cfg.Connect = func(ctx context.Context, src proto.Source) (*vsphere.Client, error) {
			return vsphere.Connect(ctx, vsphere.Config{URL: src.VCenterURL, Username: src.Username, Password: src.Password,
				Insecure: src.Insecure, Thumbprint: src.Thumbprint, Datacenter: src.Datacenter, Logger: cfg.Logger})
		}
	}
	return &Validator{cfg: cfg, log: cfg.Logger.With("component", "validate"), facts: newFactsCache(cfg.Facts)}
}

// SourceError is a vCenter the validation could not use (unreachable, bad credentials,
// untrusted certificate): the request's fault, never the controller's. Err wraps the
// vsphere sentinel.
type SourceError struct {
	VCenter string
	Err     error
}

func (e *SourceError) Error() string { return fmt.Sprintf("vCenter %s: %v", e.VCenter, e.Err) }
func (e *SourceError) Unwrap() error { return e.Err }

// sourceKey groups definitions that can share one vCenter session.
func sourceKey(s proto.Source) string {
	return strings.Join([]string{s.VCenterURL, s.Username, s.Password, s.Datacenter, s.Thumbprint, fmt.Sprint(s.Insecure)}, "\x00")
}

// Validate checks every definition (passwords in clear) and returns one result per
// definition, in order. A vCenter that cannot be used fails the call with a *SourceError.
func (v *Validator) Validate(ctx context.Context, defs []proto.JobDefinition) ([]proto.ValidationResult, error) {
	ctx, cancel := context.WithTimeout(ctx, v.cfg.Timeout)
	defer cancel()
	results := make([]proto.ValidationResult, len(defs))
	groups := map[string][]int{}
	var order []string
	for i, d := range defs {
		k := sourceKey(d.Source)
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], i)
		results[i] = proto.ValidationResult{VMPath: d.VMPath, Concerns: []proto.Concern{}}
	}
	// The fleet is read once per call, concurrently with the vCenters: a batch of a hundred
	// VMs asks each agent once.
	var agents []Agent
	var fleetDone sync.WaitGroup
	if v.cfg.Agents != nil {
		fleetDone.Add(1)
		go func() {
			defer fleetDone.Done()
			agents = v.facts.agents(ctx, v.cfg.Agents())
		}()
	}
	vms := make([]*vsphere.VMInfo, len(defs))
	for _, k := range order {
		if err := v.readVMs(ctx, defs, groups[k], vms, results); err != nil {
			fleetDone.Wait()
			return nil, err
		}
	}
	fleetDone.Wait()
	for i := range defs {
		if vms[i] == nil {
			continue // not found: the concern says so
		}
		results[i].SourceHost = &proto.SourceHost{Moref: vms[i].Checks.HostMoref, Name: vms[i].Host, Disks: len(vms[i].Disks)}
		results[i].Concerns = append(results[i].Concerns, CheckVM(vms[i], &defs[i])...)
		if v.cfg.Agents != nil {
			c, agent := CheckFleet(vms[i], &defs[i], agents)
			results[i].Concerns = append(results[i].Concerns, c...)
			results[i].Agent = agent
		}
	}
	return results, nil
}

// readVMs reads the VMs of one vCenter's definitions with one session: the folders they
// name are listed once and the VMs read in chunks of infoChunk, so a batch costs a few
// round trips rather than a few per VM. A path the listing does not resolve (a glob, a
// path relative to the datacenter, a missing VM) is looked up alone, to say why.
func (v *Validator) readVMs(ctx context.Context, defs []proto.JobDefinition, idx []int, vms []*vsphere.VMInfo, results []proto.ValidationResult) error {
	src := defs[idx[0]].Source
	srcErr := func(err error) error { return &SourceError{VCenter: hostOf(src.VCenterURL), Err: err} }
	c, err := v.cfg.Connect(ctx, src)
	if err != nil {
		return srcErr(err)
	}
	defer c.Close(context.WithoutCancel(ctx))
	paths := make([]string, len(idx))
	for k, i := range idx {
		paths[k] = defs[i].VMPath
	}
	found, err := c.FindVMs(ctx, paths)
	if err != nil {
		return srcErr(err)
	}
	var read []int
	var handles []*vsphere.VM
	for _, i := range idx {
		vm := found[defs[i].VMPath]
		if vm == nil {
			var concern *proto.Concern
			if vm, concern, err = findVM(ctx, c, defs[i].VMPath); err != nil {
				return srcErr(err)
			}
			if concern != nil {
				results[i].Concerns = append(results[i].Concerns, *concern)
				continue
			}
		}
		read = append(read, i)
		handles = append(handles, vm)
	}
	for k := 0; k < len(read); k += infoChunk {
		e := min(k+infoChunk, len(read))
		infos, err := c.VMInfos(ctx, handles[k:e])
		if err != nil {
			return srcErr(err)
		}
		for j, info := range infos {
			vms[read[k+j]] = info
		}
	}
	return nil
}

// infoChunk bounds one property read (its answer holds every device of every VM).
const infoChunk = 100

// findVM finds one VM. A VM that is not there, or a path that names several, is a
// critical concern of that job, not an error of the call.
func findVM(ctx context.Context, c *vsphere.Client, path string) (*vsphere.VM, *proto.Concern, error) {
	vm, err := c.FindVM(ctx, path)
	switch {
	case err == nil:
		return vm, nil, nil
	case errors.Is(err, vsphere.ErrVMNotFound):
		cc := critical(RuleVMNotFound, fmt.Sprintf("no VM at %s", path),
			"check the inventory path (hyperctl vms list --pattern 'DC/vm/*'); paths are Datacenter/vm/folder/name")
		return nil, &cc, nil
	case errors.Is(err, vsphere.ErrAmbiguous):
		cc := critical(RuleVMAmbiguous, fmt.Sprintf("%s matches several VMs: a job migrates one", path),
			"give one VM's full inventory path, or use a schedule, whose vm_path glob makes one job per VM")
		return nil, &cc, nil
	}
	return nil, nil, err
}

func hostOf(raw string) string {
	if u, err := proto.ParseVCenterURL(raw); err == nil {
		return u.Host
	}
	return raw
}
