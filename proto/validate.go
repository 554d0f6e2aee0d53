package proto

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// ErrInvalid marks a validation failure; the API maps it to 400.
var ErrInvalid = errors.New("invalid request")

// ErrTooLarge marks a definition over its size bound; the API maps it to 413.
var ErrTooLarge = errors.New("too large")

// Bounds of a job definition: a job is stored, replicated and shown many times over
// (every query, every WebSocket snapshot), so its size is capped where it enters.
const (
	// MaxJobDefinitionBytes caps a submitted job (and a schedule's template) as sent.
	MaxJobDefinitionBytes = 64 << 10
	// MaxNetworkMappings and MaxNetworkNameLen bound options.network_mapping.
	MaxNetworkMappings = 256
	MaxNetworkNameLen  = 256
	// MaxJobNameLen bounds a job's name.
	MaxJobNameLen = 256
	// maxFieldLen bounds every other free-text field.
	maxFieldLen = 2048
)

func invalid(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))
}

// Known option values.
var (
	ConversionMethods = []string{"auto", "vddk", "https", "nfc"}
	OutputFormats     = []string{"qcow2", "raw"}
	DiskBuses         = []string{"virtio", "sata", "scsi"}
)

// MaxMbps bounds options.max_mbps and the agent's transfer.max_mbps (1 Tbit/s): a larger
// number is a typo, not a cap.
const MaxMbps = 1_000_000

func oneOf(v string, allowed []string) bool {
	for _, a := range allowed {
		if v == a {
			return true
		}
	}
	return false
}

// Validate checks a submitted job definition. It does not contact anything.
func (d *JobDefinition) Validate() error {
	if strings.TrimSpace(d.VMPath) == "" {
		return invalid("vm_path is required")
	}
	if len(d.VMPath) > 1024 {
		return invalid("vm_path is longer than 1024 characters")
	}
	if strings.ContainsAny(d.VMPath, "\x00\n\r") {
		return invalid("vm_path contains control characters")
	}
	// An inventory path is looked up after cleaning: "DC0/vm/.." would name the
	// datacenter, not a VM (a VM named ".." once became vm_path "DC0" through a schedule).
	for _, seg := range strings.Split(d.VMPath, "/") {
		if seg == "." || seg == ".." {
			return invalid("vm_path %q has a %q segment: name the VM's folder path without . or ..", d.VMPath, seg)
		}
	}
	if len(d.Name) > MaxJobNameLen {
		return invalid("name is longer than %d characters", MaxJobNameLen)
	}
	if err := d.Source.Validate(); err != nil {
		return err
	}
	switch d.Destination.Type {
	case "kvm":
	case "":
		return invalid("destination.type is required (kvm)")
	default:
		return invalid("destination.type %q is not supported (kvm)", d.Destination.Type)
	}
	if len(d.Destination.LibvirtURI) > maxFieldLen {
		return invalid("destination.libvirt_uri is longer than %d characters", maxFieldLen)
	}
	if u := d.Destination.LibvirtURI; u != "" {
		if _, err := url.Parse(u); err != nil || !strings.Contains(u, ":") {
			return invalid("destination.libvirt_uri %q is not a libvirt URI", u)
		}
	}
	if err := d.Options.Validate(); err != nil {
		return err
	}
	if b, err := json.Marshal(d); err == nil && len(b) > MaxJobDefinitionBytes {
		return fmt.Errorf("%w: the job definition is %d bytes, at most %d", ErrTooLarge, len(b), MaxJobDefinitionBytes)
	}
	return nil
}

// Validate checks the source section.
func (s *Source) Validate() error {
	switch s.Type {
	case "vsphere":
	case "":
		return invalid("source.type is required (vsphere)")
	default:
		return invalid("source.type %q is not supported (vsphere)", s.Type)
	}
	for _, f := range []struct {
		name, v string
	}{{"vcenter_url", s.VCenterURL}, {"username", s.Username}, {"password", s.Password}, {"datacenter", s.Datacenter}, {"thumbprint", s.Thumbprint}} {
		if len(f.v) > maxFieldLen {
			return invalid("source.%s is longer than %d characters", f.name, maxFieldLen)
		}
	}
	if strings.TrimSpace(s.VCenterURL) == "" {
		return invalid("source.vcenter_url is required")
	}
	if _, err := ParseVCenterURL(s.VCenterURL); err != nil {
		return invalid("source.vcenter_url: %v", err)
	}
	if s.Username == "" {
		return invalid("source.username is required")
	}
	if s.Password == "" {
		return invalid("source.password is required")
	}
	if s.Password == RedactedPassword {
		return invalid("source.password is the redaction mask; send the real password")
	}
	return nil
}

// ParseVCenterURL accepts "vcenter.example.com", "host:port" or a full https URL and returns
// the SDK URL (https://host[:port]/sdk) without credentials.
func ParseVCenterURL(raw string) (*url.URL, error) {
	s := strings.TrimSpace(raw)
	if !strings.Contains(s, "://") {
		s = "https://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("not a URL")
	}
	if u.Scheme != "https" && u.Scheme != "http" {
		return nil, fmt.Errorf("scheme %q is not https", u.Scheme)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("no host")
	}
	if u.User != nil {
		return nil, fmt.Errorf("credentials belong in username/password, not in the URL")
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/sdk"
	}
	return u, nil
}

// VCenterKey names a job's source vCenter for the per-vCenter concurrency limit: the
// lower-cased host of its URL (the URL itself, lower-cased, when it does not parse).
func (d *JobDefinition) VCenterKey() string {
	if u, err := ParseVCenterURL(d.Source.VCenterURL); err == nil {
		return strings.ToLower(u.Host)
	}
	return strings.ToLower(d.Source.VCenterURL)
}

// Validate checks the options section.
func (o *Options) Validate() error {
	if o.ConversionMethod != "" && !oneOf(o.ConversionMethod, ConversionMethods) {
		return invalid("options.conversion_method %q is not one of %s", o.ConversionMethod, strings.Join(ConversionMethods, "|"))
	}
	if o.OutputFormat != "" && !oneOf(o.OutputFormat, OutputFormats) {
		return invalid("options.output_format %q is not one of %s", o.OutputFormat, strings.Join(OutputFormats, "|"))
	}
	if o.DiskBus != "" && !oneOf(o.DiskBus, DiskBuses) {
		return invalid("options.disk_bus %q is not one of %s", o.DiskBus, strings.Join(DiskBuses, "|"))
	}
	if o.ShutdownTimeoutSeconds < 0 || o.ShutdownTimeoutSeconds > 86400 {
		return invalid("options.shutdown_timeout_seconds must be between 0 and 86400")
	}
	if o.BootTimeoutSeconds < 0 || o.BootTimeoutSeconds > 86400 {
		return invalid("options.boot_timeout_seconds must be between 0 and 86400")
	}
	if o.MaxAttempts < 0 || o.MaxAttempts > 100 {
		return invalid("options.max_attempts must be between 0 and 100")
	}
	if o.MaxMbps < 0 || o.MaxMbps > MaxMbps {
		return invalid("options.max_mbps must be between 0 (no cap) and %d megabits per second", MaxMbps)
	}
	if len(o.NetworkMapping) > MaxNetworkMappings {
		return invalid("options.network_mapping has %d entries, at most %d", len(o.NetworkMapping), MaxNetworkMappings)
	}
	for k, v := range o.NetworkMapping {
		if k == "" || v == "" {
			return invalid("options.network_mapping has an empty name")
		}
		if len(k) > MaxNetworkNameLen || len(v) > MaxNetworkNameLen {
			return invalid("options.network_mapping names are at most %d characters", MaxNetworkNameLen)
		}
	}
	if len(o.TargetAgent) > MaxNodeNameLen {
		return invalid("options.target_agent is longer than %d characters", MaxNodeNameLen)
	}
	if err := o.validateWarm(); err != nil {
		return err
	}
	return o.Hooks.Validate()
}

// Validate checks a query.
func (q *QueryRequest) Validate() error {
	for _, s := range q.Status {
		if !s.Valid() {
			return invalid("status %q is not one of pending|running|completed|failed|cancelled", s)
		}
	}
	if q.Limit < 0 {
		return invalid("limit must not be negative")
	}
	if q.Limit > MaxQueryLimit {
		return invalid("limit must be at most %d", MaxQueryLimit)
	}
	if q.Offset < 0 {
		return invalid("offset must not be negative")
	}
	if q.Offset > 0 && q.Cursor != "" {
		return invalid("use either offset or cursor, not both")
	}
	if len(q.JobIDs) > MaxQueryLimit {
		return invalid("at most %d job_ids", MaxQueryLimit)
	}
	return nil
}

// Validate checks a cancel request.
func (c *CancelRequest) Validate() error {
	if len(c.JobIDs) == 0 && c.Status == "" {
		return invalid("job_ids or status is required")
	}
	if c.Status != "" && c.Status != StatusPending && c.Status != StatusRunning {
		return invalid("status %q cannot be cancelled (pending|running)", c.Status)
	}
	if len(c.JobIDs) > 10000 {
		return invalid("at most 10000 job_ids")
	}
	for _, id := range c.JobIDs {
		if id == "" {
			return invalid("job_ids contains an empty id")
		}
	}
	return nil
}
