package proto

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"sort"
	"strings"
	"time"
)

// DecodeStrict decodes exactly one JSON value with no unknown fields. allowEmpty makes an
// empty body decode as the zero value.
func DecodeStrict(b []byte, v any, allowEmpty bool) error {
	if len(bytes.TrimSpace(b)) == 0 {
		if allowEmpty {
			return nil
		}
		return errors.New("request body is empty: send a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if !errors.As(err, &te) && strings.HasPrefix(err.Error(), "json: unknown field ") {
			if path := unknownFieldPath(b, reflect.TypeOf(v)); path != "" {
				return fmt.Errorf("unknown field %q", path)
			}
		}
		return describeJSONError(err)
	}
	if dec.More() {
		return errors.New("request body has data after the JSON object")
	}
	var extra json.RawMessage
	if err := dec.Decode(&extra); err != io.EOF {
		return errors.New("request body has data after the JSON object")
	}
	return nil
}

func describeJSONError(err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	var pe *time.ParseError
	switch {
	case errors.As(err, &se):
		return fmt.Errorf("malformed JSON at byte %d: %v", se.Offset, se)
	case errors.As(err, &te):
		field := te.Field
		if field == "" {
			field = "body"
		}
		if te.Type == nil {
			return fmt.Errorf("field %q has the wrong type", field)
		}
		return fmt.Errorf("field %q must be %s, not %s", field, jsonKind(te.Type.Kind().String()), te.Value)
	case errors.As(err, &pe):
		// encoding/json does not say which field a time came from; a job's only time is
		// options.cutover_at.
		return fmt.Errorf("a time (such as options.cutover_at) must be RFC 3339 like 2026-12-05T02:00:00Z, not %q", pe.Value)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errors.New("malformed JSON: unexpected end of input")
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return fmt.Errorf("unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
	}
	return fmt.Errorf("malformed JSON: %v", err)
}

func jsonKind(k string) string {
	switch k {
	case "string":
		return "a string"
	case "bool":
		return "a boolean"
	case "map", "struct":
		return "an object"
	case "slice", "array":
		return "an array"
	case "int", "int64", "int32", "uint64", "uint32", "float64":
		return "a number"
	}
	return k
}

// unknownFieldPath finds the first object key in b that t has no field for, as a JSON
// path ("options.shutdwn", "[1].options.x"): encoding/json names only the key, and in a
// job with nested objects the operator needs to know which one (issue 17).
func unknownFieldPath(b []byte, t reflect.Type) string {
	var v any
	if json.Unmarshal(b, &v) != nil {
		return ""
	}
	return findUnknown(v, t, "")
}

func findUnknown(v any, t reflect.Type, path string) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	join := func(k string) string {
		if path == "" {
			return k
		}
		return path + "." + k
	}
	switch x := v.(type) {
	case map[string]any:
		switch t.Kind() {
		case reflect.Map:
			for k, e := range x {
				if p := findUnknown(e, t.Elem(), join(k)); p != "" {
					return p
				}
			}
		case reflect.Struct:
			keys := make([]string, 0, len(x))
			for k := range x {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				f, ok := jsonField(t, k)
				if !ok {
					return join(k)
				}
				if p := findUnknown(x[k], f.Type, join(k)); p != "" {
					return p
				}
			}
		}
	case []any:
		if t.Kind() == reflect.Slice || t.Kind() == reflect.Array {
			for i, e := range x {
				if p := findUnknown(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); p != "" {
					return p
				}
			}
		}
	}
	return ""
}

// jsonField is the field of struct t that JSON key k decodes into (case-insensitive like
// encoding/json, embedded structs included).
func jsonField(t reflect.Type, k string) (reflect.StructField, bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if f.Anonymous && name == "" {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				if g, ok := jsonField(ft, k); ok {
					return g, true
				}
			}
			continue
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		if strings.EqualFold(name, k) {
			return f, true
		}
	}
	return reflect.StructField{}, false
}
