package manifest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
)

// encode marshals a typed object to JSON without the fields that only Go's
// zero values put there (creationTimestamp: null, status: {},
// strategy: {}, resources: {}): they were not in the user's file, are
// noise in a diff, and the API server cannot tell them from absent ones.
func encode(obj any) ([]byte, error) {
	b, err := json.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	// Numbers stay as written: float64 would round large integers.
	dec.UseNumber()
	var m any
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	dropZeroStructs(reflect.ValueOf(obj), m)
	// A status is the server's to write, and a zero one says nothing; a
	// ReplicationController's encodes as {replicas: 0}, not {}.
	if v := reflect.Indirect(reflect.ValueOf(obj)); v.Kind() == reflect.Struct {
		if st := v.FieldByName("Status"); st.IsValid() && st.Kind() == reflect.Struct && st.IsZero() {
			if top, ok := m.(map[string]any); ok {
				delete(top, "status")
			}
		}
	}
	out, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	return out, nil
}

// dropZeroStructs deletes from j, the JSON form of v, every field that is
// a non-pointer struct holding its zero value and encodes as null or {}.
// Kubernetes' types make a struct field a pointer when its absence means
// something (emptyDir: {}), so only noise goes; zero structs with a JSON
// form of their own (a Quantity's "0") stay.
func dropZeroStructs(v reflect.Value, j any) {
	for v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface {
		if v.IsNil() {
			return
		}
		v = v.Elem()
	}
	switch v.Kind() {
	case reflect.Struct:
		m, ok := j.(map[string]any)
		if !ok {
			return
		}
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			switch {
			case !f.IsExported() || name == "-":
				continue
			case f.Anonymous && name == "":
				// Embedded (TypeMeta, ProbeHandler): its fields are v's.
				dropZeroStructs(v.Field(i), m)
				continue
			case name == "":
				name = f.Name
			}
			child, ok := m[name]
			if !ok {
				continue
			}
			fv := v.Field(i)
			if fv.Kind() == reflect.Struct && fv.IsZero() && emptyJSON(child) {
				delete(m, name)
				continue
			}
			dropZeroStructs(fv, child)
		}
	case reflect.Slice, reflect.Array:
		a, ok := j.([]any)
		if !ok || len(a) != v.Len() {
			return
		}
		for i := range a {
			dropZeroStructs(v.Index(i), a[i])
		}
	case reflect.Map:
		m, ok := j.(map[string]any)
		if !ok || v.Type().Key().Kind() != reflect.String {
			return
		}
		for it := v.MapRange(); it.Next(); {
			dropZeroStructs(it.Value(), m[it.Key().String()])
		}
	}
}

func emptyJSON(j any) bool {
	m, isMap := j.(map[string]any)
	return j == nil || (isMap && len(m) == 0)
}
