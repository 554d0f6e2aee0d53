package vsphere

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/view"
	"github.com/vmware/govmomi/vim25/mo"
)

// DatastoreFileURL is the HTTPS URL of a file on a datastore, /folder/<path>?dcPath=…&dsName=…,
// and the header with the session cookie that authorizes reading it (ranged GETs work). The
// file can be given as (datastore, path) — ("LocalDS_0", "vm/disk1-flat.vmdk") — or as one
// datastore path in the first argument — ("[LocalDS_0] vm/disk1.vmdk", "").
// The header is a secret: never log it.
func (c *Client) DatastoreFileURL(ctx context.Context, datastore, p string) (*url.URL, http.Header, error) {
	if p == "" && strings.HasPrefix(datastore, "[") {
		var dp object.DatastorePath
		if !dp.FromString(datastore) {
			return nil, nil, fmt.Errorf("vsphere: %q is not a datastore path", datastore)
		}
		datastore, p = dp.Datastore, dp.Path
	}
	p = strings.TrimPrefix(p, "/")
	if datastore == "" || p == "" {
		return nil, nil, fmt.Errorf("vsphere: datastore file URL needs a datastore and a path (got %q, %q)", datastore, p)
	}
	dcPath, err := c.datastoreDatacenter(ctx, datastore)
	if err != nil {
		return nil, nil, err
	}
	u := &url.URL{
		Scheme:   c.u.Scheme,
		Host:     c.u.Host,
		Path:     "/folder/" + p,
		RawQuery: url.Values{"dcPath": {dcPath}, "dsName": {datastore}}.Encode(),
	}
	return u, c.SessionHeader(), nil
}

// datastoreDatacenter finds the inventory path of the datacenter that holds the named
// datastore: Config.Datacenter when set, else a search, cached per name.
func (c *Client) datastoreDatacenter(ctx context.Context, name string) (string, error) {
	if c.dc != nil {
		return strings.TrimPrefix(c.dc.InventoryPath, "/"), nil
	}
	c.mu.Lock()
	cached, ok := c.dcPaths[name]
	c.mu.Unlock()
	if ok {
		return cached, nil
	}

	m := view.NewManager(c.vim)
	v, err := m.CreateContainerView(ctx, c.vim.ServiceContent.RootFolder, []string{"Datastore"}, true)
	if err != nil {
		return "", fmt.Errorf("vsphere: datastore %q: %w", name, err)
	}
	defer func() { _ = v.Destroy(context.WithoutCancel(ctx)) }()
	var dss []mo.Datastore
	// Names only, for all datastores: there are tens to hundreds, and a name filter on the
	// server would treat glob characters in names as patterns.
	if err := v.Retrieve(ctx, []string{"Datastore"}, []string{"name"}, &dss); err != nil {
		return "", fmt.Errorf("vsphere: datastore %q: %w", name, err)
	}
	var paths []string
	for _, ds := range dss {
		if ds.Name != name {
			continue
		}
		_, dcPath, err := c.datacenterOf(ctx, ds.Self)
		if err != nil {
			return "", err
		}
		paths = append(paths, dcPath)
	}
	switch len(paths) {
	case 0:
		return "", fmt.Errorf("%w: datastore %q on %s", ErrNotFound, name, c.u.Host)
	case 1:
	default:
		return "", fmt.Errorf("vsphere: datastore %q exists in datacenters %s: set the datacenter", name, strings.Join(paths, ", "))
	}
	c.mu.Lock()
	c.dcPaths[name] = paths[0]
	c.mu.Unlock()
	return paths[0], nil
}
