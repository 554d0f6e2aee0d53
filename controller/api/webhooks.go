package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/gorilla/mux"

	"github.com/hypersdk/hypersdk/controller/state"
	"github.com/hypersdk/hypersdk/controller/webhook"
	"github.com/hypersdk/hypersdk/proto"
)

// WebhookTester sends one test delivery (the webhook deliverer).
type WebhookTester interface {
	Test(ctx context.Context, r proto.WebhookTestRequest) error
}

type webhookAPI struct {
	s      *Server
	tester WebhookTester
}

// SetWebhooks adds the /webhooks routes. Call once, before serving.
func (s *Server) SetWebhooks(tester WebhookTester) {
	a := &webhookAPI{s: s, tester: tester}
	r := s.router
	r.HandleFunc("/webhooks", a.handleList).Methods(http.MethodGet)
	r.HandleFunc("/webhooks", a.handleAdd).Methods(http.MethodPost)
	r.HandleFunc("/webhooks/test", a.handleTest).Methods(http.MethodPost)
	r.HandleFunc("/webhooks/{index}", a.handleDelete).Methods(http.MethodDelete)
}

func (a *webhookAPI) handleList(w http.ResponseWriter, r *http.Request) {
	hooks := a.s.st.Webhooks()
	out := proto.WebhookListResponse{Webhooks: make([]proto.Webhook, 0, len(hooks)), Total: len(hooks), Timestamp: a.s.now()}
	for _, h := range hooks {
		out.Webhooks = append(out.Webhooks, h.Redacted())
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *webhookAPI) handleAdd(w http.ResponseWriter, r *http.Request) {
	body, req, ok := readRequest[proto.WebhookRequest](a.s, w, r, false)
	if !ok {
		return
	}
	if err := webhook.CheckURL(a.s.cfg.Outbound, req.URL); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	a.s.write(w, r, body, func() (int, any, error) {
		hook, err := webhook.SealSecrets(a.s.cfg.Secrets, req.Webhook())
		if err != nil {
			return 0, nil, err
		}
		v, err := a.s.node.Apply(state.MustEncode(state.CmdWebhookAdd, state.WebhookAdd{Webhook: hook, At: a.s.now()}))
		if err != nil {
			return 0, nil, err
		}
		added := v.(state.WebhookAdded)
		return http.StatusCreated, proto.WebhookAddResponse{Message: "webhook added successfully", Webhook: added.Webhook.Redacted(), Index: added.Index}, nil
	})
}

func (a *webhookAPI) handleDelete(w http.ResponseWriter, r *http.Request) {
	raw := mux.Vars(r)["index"]
	index, err := strconv.Atoi(raw)
	if err != nil || index < 0 {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("index %q must be a non-negative integer (the webhook's position in GET /webhooks)", raw))
		return
	}
	a.s.write(w, r, nil, func() (int, any, error) {
		// Resolve the index on the leader, then delete by id: two concurrent deletes of
		// the same index remove one webhook, and the second gets 404.
		hooks := a.s.st.Webhooks()
		if index >= len(hooks) {
			return 0, nil, fmt.Errorf("webhook index %d (there are %d webhooks): %w", index, len(hooks), state.ErrNotFound)
		}
		if _, err := a.s.node.Apply(state.MustEncode(state.CmdWebhookDelete, state.WebhookDelete{ID: hooks[index].ID})); err != nil {
			return 0, nil, err
		}
		return http.StatusOK, proto.MessageResponse{Message: "webhook deleted successfully"}, nil
	})
}

// handleTest sends from the node that received the request: nothing is replicated.
func (a *webhookAPI) handleTest(w http.ResponseWriter, r *http.Request) {
	_, req, ok := readRequest[proto.WebhookTestRequest](a.s, w, r, false)
	if !ok {
		return
	}
	if a.tester == nil {
		writeError(w, http.StatusServiceUnavailable, "webhook delivery is not wired on this controller")
		return
	}
	if err := a.tester.Test(r.Context(), req); err != nil {
		if errors.Is(err, proto.ErrInvalid) {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		writeError(w, http.StatusBadGateway, "test webhook failed: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, proto.MessageResponse{Message: "test webhook sent"})
}
