package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"gopkg.in/yaml.v3"
)

// maxInput bounds an input file (the controller refuses bodies over 1 MiB anyway).
const maxInput = 8 << 20

// readDocuments reads path ("-" is stdin) holding JSON or YAML and returns each document
// as JSON: a JSON array or a YAML list gives one per item, and so do YAML documents
// separated by "---". The JSON is sent as is, so the controller names unknown fields.
func (a *app) readDocuments(path string) ([]json.RawMessage, error) {
	if path == "" {
		return nil, usagef("-f FILE is required (JSON or YAML; - reads stdin)")
	}
	var r io.Reader = a.stdin
	name := "stdin"
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, usagef("%v", err)
		}
		defer f.Close()
		r, name = f, path
	}
	b, err := io.ReadAll(io.LimitReader(r, maxInput+1))
	if err != nil {
		return nil, usagef("read %s: %v", name, err)
	}
	if len(b) > maxInput {
		return nil, usagef("%s is larger than %d bytes", name, maxInput)
	}
	docs, err := parseDocuments(b)
	if err != nil {
		return nil, usagef("%s: %v", name, err)
	}
	if len(docs) == 0 {
		return nil, usagef("%s is empty", name)
	}
	return docs, nil
}

func parseDocuments(b []byte) ([]json.RawMessage, error) {
	trimmed := bytes.TrimSpace(b)
	if len(trimmed) == 0 {
		return nil, nil
	}
	if trimmed[0] == '{' || trimmed[0] == '[' {
		var v any
		dec := json.NewDecoder(bytes.NewReader(trimmed))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("invalid JSON: %v", err)
		}
		if dec.More() {
			return nil, errors.New("invalid JSON: data after the first value")
		}
		return split(v)
	}
	var out []json.RawMessage
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var v any
		err := dec.Decode(&v)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("invalid YAML: %v", err)
		}
		if v == nil {
			continue
		}
		docs, err := split(v)
		if err != nil {
			return nil, err
		}
		out = append(out, docs...)
	}
	return out, nil
}

// split returns one JSON document per list item, or the object itself.
func split(v any) ([]json.RawMessage, error) {
	items := []any{v}
	if l, ok := v.([]any); ok {
		items = l
	}
	var out []json.RawMessage
	for i, it := range items {
		it, err := jsonable(it)
		if err != nil {
			return nil, err
		}
		if _, ok := it.(map[string]any); !ok {
			return nil, fmt.Errorf("item %d is not an object", i+1)
		}
		b, err := json.Marshal(it)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

// jsonable converts YAML maps with non-string keys (map[any]any) to JSON objects.
func jsonable(v any) (any, error) {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			c, err := jsonable(e)
			if err != nil {
				return nil, err
			}
			x[k] = c
		}
		return x, nil
	case map[any]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			c, err := jsonable(e)
			if err != nil {
				return nil, err
			}
			m[fmt.Sprint(k)] = c
		}
		return m, nil
	case []any:
		for i, e := range x {
			c, err := jsonable(e)
			if err != nil {
				return nil, err
			}
			x[i] = c
		}
		return x, nil
	}
	return v, nil
}

// readOne reads exactly one document.
func (a *app) readOne(path string) (json.RawMessage, error) {
	docs, err := a.readDocuments(path)
	if err != nil {
		return nil, err
	}
	if len(docs) != 1 {
		return nil, usagef("%s holds %d documents; this command takes one", path, len(docs))
	}
	return docs[0], nil
}
