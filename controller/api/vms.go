package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hypersdk/hypersdk/proto"
	"github.com/hypersdk/hypersdk/shared/vsphere"
)

// VM discovery: any controller talks to the vCenter directly (nothing is replicated), with
// the credentials of the request, which are used for this call only and never logged.

// vmSourceHeader carries the password out of the URL for clients that prefer it there
// (a query string ends up in proxies' logs; the document's GETs put it in the query).
const vmPasswordHeader = "X-Vcenter-Password"

// SetVMs adds the VM discovery routes.
func (s *Server) SetVMs() {
	r := s.router
	r.HandleFunc("/vms/list", s.handleVMList).Methods(http.MethodGet)
	r.HandleFunc("/vms/info", s.handleVMInfo).Methods(http.MethodGet)
	r.HandleFunc("/vms/shutdown", s.vmAction("shutdown")).Methods(http.MethodPost)
	r.HandleFunc("/vms/poweroff", s.vmAction("poweroff")).Methods(http.MethodPost)
	r.HandleFunc("/vms/remove-cdrom", s.vmAction("remove-cdrom")).Methods(http.MethodPost)
}

func sourceFromQuery(r *http.Request) (proto.Source, error) {
	q := r.URL.Query()
	src := proto.Source{Type: "vsphere", VCenterURL: q.Get("vcenter_url"), Username: q.Get("username"),
		Password: q.Get("password"), Datacenter: q.Get("datacenter"), Thumbprint: q.Get("thumbprint")}
	if p := r.Header.Get(vmPasswordHeader); p != "" {
		src.Password = p
	}
	if v := q.Get("insecure"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return src, fmt.Errorf("%w: insecure must be true or false", proto.ErrInvalid)
		}
		src.Insecure = b
	}
	return src, src.Validate()
}

// connectVC logs in with the request's credentials; errors never contain the password.
// Every connection goes through the outbound policy's dialer: a URL naming a refused
// address (or a name resolving to one) is never dialled.
func (s *Server) connectVC(ctx context.Context, src proto.Source) (*vsphere.Client, error) {
	u, err := proto.ParseVCenterURL(src.VCenterURL)
	if err != nil {
		return nil, fmt.Errorf("%w: source.vcenter_url: %v", proto.ErrInvalid, err)
	}
	if u.Scheme != "https" && !s.cfg.Outbound.AllowHTTP {
		return nil, fmt.Errorf("%w: vcenter_url must be https (security.allow_http_targets)", proto.ErrInvalid)
	}
	c, err := vsphere.Connect(ctx, vsphere.Config{
		URL: src.VCenterURL, Username: src.Username, Password: src.Password, Insecure: src.Insecure,
		Thumbprint: src.Thumbprint, Datacenter: src.Datacenter, Dialer: s.cfg.Outbound.Dialer(15 * time.Second), Logger: s.log,
	})
	if err != nil && !errors.Is(err, vsphere.ErrBadCredentials) && !errors.Is(err, vsphere.ErrUntrustedCertificate) &&
		!errors.Is(err, vsphere.ErrNotFound) {
		// Refused, reset, closed, timed out, not allowed by the outbound policy, or
		// something that is not a vSphere SDK answering: one answer for all, since telling
		// them apart made /vms/list a port scanner. The detail goes to the log.
		s.log.Info("vCenter not reached", "vcenter", u.Host, "err", err)
		return nil, errVCUnreachable
	}
	return c, err
}

// errVCUnreachable is every failure to reach a vSphere SDK, as callers see it.
var errVCUnreachable = fmt.Errorf("%w", vsphere.ErrUnreachable)

// vcStatus maps vSphere errors: all are problems with what the caller sent (wrong URL,
// credentials, certificate, path), so they are 4xx, never a 5xx.
func vcStatus(err error) int {
	if errors.Is(err, vsphere.ErrVMNotFound) || errors.Is(err, vsphere.ErrNotFound) {
		return http.StatusNotFound
	}
	return http.StatusBadRequest
}

func (s *Server) vcError(w http.ResponseWriter, err error) {
	writeError(w, vcStatus(err), err.Error())
}

func (s *Server) handleVMList(w http.ResponseWriter, r *http.Request) {
	src, err := sourceFromQuery(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	pattern := r.URL.Query().Get("pattern")
	if pattern == "" {
		dc := src.Datacenter
		if dc == "" {
			dc = "*"
		}
		pattern = dc + "/vm/*"
	}
	ctx, cancel := context.WithTimeout(r.Context(), 60*time.Second)
	defer cancel()
	c, err := s.connectVC(ctx, src)
	if err != nil {
		s.vcError(w, err)
		return
	}
	defer c.Close(context.WithoutCancel(ctx))
	rows, err := c.ListVMs(ctx, pattern)
	if err != nil {
		s.vcError(w, err)
		return
	}
	out := proto.VMList{VMs: make([]proto.VM, 0, len(rows))}
	for _, v := range rows {
		out.VMs = append(out.VMs, proto.VM{Name: v.Name, Path: strings.TrimPrefix(v.Path, "/"), PowerState: v.PowerState,
			NumCPU: v.NumCPU, MemoryMB: v.MemoryMB, Storage: v.StorageBytes, GuestOS: v.GuestOS, IPAddress: v.IPAddress})
	}
	out.Total = len(out.VMs)
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleVMInfo(w http.ResponseWriter, r *http.Request) {
	src, err := sourceFromQuery(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	path := r.URL.Query().Get("vm_path")
	if path == "" {
		writeError(w, http.StatusBadRequest, "vm_path is required")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 60*time.Second)
	defer cancel()
	c, err := s.connectVC(ctx, src)
	if err != nil {
		s.vcError(w, err)
		return
	}
	defer c.Close(context.WithoutCancel(ctx))
	vm, err := c.FindVM(ctx, path)
	if err != nil {
		s.vcError(w, err)
		return
	}
	info, err := c.VMInfo(ctx, vm)
	if err != nil {
		s.vcError(w, err)
		return
	}
	out := proto.VMInfo{Name: info.Name, Path: strings.TrimPrefix(info.Path, "/"), UUID: info.UUID,
		PowerState: info.PowerState, GuestOS: info.GuestOS, IPAddress: info.IPAddress, Disks: []proto.VMDisk{},
		Hardware: proto.VMHardware{NumCPU: info.NumCPU, CoresPerSocket: info.CoresPerSocket, MemoryMB: info.MemoryMB,
			NumVirtualDisks: len(info.Disks), Firmware: info.Firmware}}
	for _, d := range info.Disks {
		out.Disks = append(out.Disks, proto.VMDisk{Label: d.Label, CapacityKB: d.CapacityBytes / 1024, FilePath: d.File})
	}
	for _, n := range info.NICs {
		out.NICs = append(out.NICs, proto.VMNIC{Key: n.Key, Label: n.Label, Network: n.Network, MAC: n.MAC, AdapterType: n.AdapterType, Connected: n.Connected})
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) vmAction(action string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, ok := s.readBody(w, r)
		if !ok {
			return
		}
		var req proto.VMActionRequest
		if err := decodeStrict(body, &req, false); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		src := proto.Source{Type: "vsphere", VCenterURL: req.VCenterURL, Username: req.Username, Password: req.Password,
			Datacenter: req.Datacenter, Insecure: req.Insecure, Thumbprint: req.Thumbprint}
		if err := src.Validate(); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		if req.VMPath == "" {
			writeError(w, http.StatusBadRequest, "vm_path is required")
			return
		}
		if req.TimeoutSeconds < 0 || req.TimeoutSeconds > 600 {
			writeError(w, http.StatusBadRequest, "timeout_seconds must be between 0 and 600")
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), time.Duration(req.TimeoutSeconds)*time.Second+60*time.Second)
		defer cancel()
		c, err := s.connectVC(ctx, src)
		if err != nil {
			s.vcError(w, err)
			return
		}
		defer c.Close(context.WithoutCancel(ctx))
		vm, err := c.FindVM(ctx, req.VMPath)
		if err != nil {
			s.vcError(w, err)
			return
		}
		var msg string
		switch action {
		case "shutdown":
			// Without timeout_seconds the shutdown is only initiated, as the document says.
			err = c.Shutdown(ctx, vm, time.Duration(req.TimeoutSeconds)*time.Second)
			msg = "VM shutdown initiated"
			if err == nil && req.TimeoutSeconds > 0 {
				msg = "VM shut down"
			}
			if errors.Is(err, vsphere.ErrShutdownTimeout) && req.TimeoutSeconds == 0 {
				err = nil
			}
		case "poweroff":
			err = c.PowerOff(ctx, vm)
			msg = "VM powered off"
		case "remove-cdrom":
			var n int
			n, err = c.RemoveCDROMs(ctx, vm)
			msg = "CD-ROM devices removed"
			if err == nil {
				s.log.Info("removed CD-ROM devices", "vm", req.VMPath, "count", n)
			}
		}
		if err != nil {
			s.vcError(w, err)
			return
		}
		s.log.Log(ctx, slog.LevelInfo, "vm action", "action", action, "vm", req.VMPath)
		writeJSON(w, http.StatusOK, proto.MessageResponse{Message: msg})
	}
}
