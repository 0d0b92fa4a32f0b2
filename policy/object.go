package policy

import (
	"fmt"
	"strings"

	"gopkg.in/yaml.v3"
)

// metadataFieldNames are the fields of Kubernetes ObjectMeta. All are
// accepted, so that an object exported with kubectl lints as is; only
// name and namespace are kept.
var metadataFieldNames = []string{
	"name", "namespace", "generateName", "labels", "annotations", "uid",
	"resourceVersion", "generation", "creationTimestamp", "deletionTimestamp",
	"deletionGracePeriodSeconds", "ownerReferences", "finalizers",
	"managedFields", "selfLink",
}

// policy decodes one ResiliencePolicy object, applies the defaults and
// validates it. It returns nil when the object is another kind, whose
// spec would only produce noise.
func (d *objDecoder) policy(n *yaml.Node) *ResiliencePolicy {
	at := n
	if d.via != nil {
		at = d.via
	}
	p := &ResiliencePolicy{
		APIVersion: APIVersion,
		Kind:       Kind,
		Source:     fmt.Sprintf("%s:%d:%d", d.file.name, at.Line, at.Column),
	}
	// spec is decoded after the other fields, to know the kind first;
	// by then mapping has left the alias it was reached through, which
	// the place keeps for every error under it.
	var spec *place
	wrongKind := false
	present := d.mapping(n, "", []field{
		{"apiVersion", func(path string, v *yaml.Node) {
			if s, ok := d.str(path, v); ok && s != APIVersion {
				d.failAt(v, path, "want %q, got %q", APIVersion, s)
			}
		}},
		{"kind", func(path string, v *yaml.Node) {
			if s, ok := d.str(path, v); ok && s != Kind {
				d.failAt(v, path, "want %q, got %q", Kind, s)
				wrongKind = true
			}
		}},
		{"metadata", func(path string, v *yaml.Node) { d.metadata(path, v, &p.Metadata) }},
		{"spec", func(_ string, v *yaml.Node) { at := d.here(v); spec = &at }},
		{"status", nil},
	})
	if present == nil || wrongKind {
		return nil
	}
	if !present["apiVersion"] {
		d.missing(n, "apiVersion", fmt.Sprintf("%q", APIVersion))
	}
	if !present["kind"] {
		d.missing(n, "kind", fmt.Sprintf("%q", Kind))
	}
	if spec == nil {
		d.missing(n, "spec", "a mapping with at least service")
		return nil
	}
	outer := d.via
	d.via = spec.via
	ok := d.spec("spec", spec.node, &p.Spec)
	d.via = outer
	if !ok {
		return nil
	}
	// validate needs no via of its own: each error goes to the place
	// that spec recorded for its field, alias included.
	d.validate(p)
	return p
}

func (d *objDecoder) metadata(path string, n *yaml.Node, m *ObjectMeta) {
	fields := make([]field, len(metadataFieldNames))
	for i, name := range metadataFieldNames {
		fields[i] = field{name: name}
	}
	fields[0].decode = func(fp string, v *yaml.Node) { m.Name, _ = d.str(fp, v) }
	fields[1].decode = func(fp string, v *yaml.Node) { m.Namespace, _ = d.str(fp, v) }
	d.mapping(n, path, fields)
}

// validate runs Validate on the decoded struct and positions its errors
// at the nodes they are about, or at the nearest enclosing node when the
// field was defaulted. Fields that already failed to decode are skipped.
func (d *objDecoder) validate(p *ResiliencePolicy) {
	for _, e := range validateSpec(&p.Spec) {
		if d.reported(e.Field) {
			continue
		}
		d.failAtPlace(d.placeOf(e.Field), e.Field, "%s", e.Msg)
	}
}

// reported says whether the field or one of its parents already has an
// error.
func (d *objDecoder) reported(path string) bool {
	for {
		if d.bad[path] {
			return true
		}
		i := strings.LastIndexByte(path, '.')
		if i < 0 {
			return false
		}
		path = path[:i]
	}
}

// placeOf is where the field at path, or the nearest enclosing one,
// was written.
func (d *objDecoder) placeOf(path string) place {
	for {
		if p, ok := d.pos[path]; ok {
			return p
		}
		i := strings.LastIndexByte(path, '.')
		if i < 0 {
			return d.here(d.root)
		}
		path = path[:i]
	}
}

// list decodes a v1 List (or ResiliencePolicyList): its items are
// policies, reported with an items[i]. prefix.
func (f *fileDecoder) list(n *yaml.Node) {
	d := &objDecoder{file: f, root: n, pos: map[string]place{}, bad: map[string]bool{}}
	d.mapping(n, "", []field{
		{"apiVersion", func(path string, v *yaml.Node) { d.str(path, v) }},
		{"kind", nil},
		{"metadata", nil},
		{"items", func(path string, v *yaml.Node) {
			if v.Kind != yaml.SequenceNode {
				d.failAt(v, path, "want a list, got %s", describe(v))
				return
			}
			for i, item := range v.Content {
				via := d.via
				if via == nil && item.Kind == yaml.AliasNode {
					via = item
				}
				f.object(resolve(item), via, fmt.Sprintf("items[%d].", i))
			}
		}},
	})
}
