package policy

import "gopkg.in/yaml.v3"

// maxAliasNodes bounds the nodes YAML aliases add to a file, all its
// documents together: each alias is decoded as a copy of what its anchor
// names, so a few kilobytes of aliases to a list can stand for millions
// of nodes (N aliases of a policy whose list holds N items: N² to
// decode; 200 KB of them held a sidecar at start for nearly five
// minutes). yaml.v3 bounds aliases only when it decodes into Go values,
// not in the node tree the policy decoder walks. A bound per document
// would let a file of many documents multiply it, so the file has one
// budget. A file without aliases adds nothing; 100,000 nodes are more
// than any sharing of retryOn lists or whole specs needs, and decode in
// well under a second.
const maxAliasNodes = 100_000

// aliasBudget counts the nodes that aliases add to one file's documents.
type aliasBudget struct{ added int }

// check returns the aliases of a document (root, one the parser just
// returned) whose anchor is not in the document, and when there are none
// the alias that takes the file's count past maxAliasNodes (nil while
// under).
//
// yaml.v3 keeps anchors for the whole stream, so an alias can name an
// anchor of an earlier document, which YAML does not allow (anchors are
// per document; PyYAML and kubectl refuse it). Left in, it would share
// one document's nodes with every later one, past any bound that counts
// a document's own text.
func (b *aliasBudget) check(root *yaml.Node) (foreign []*yaml.Node, over *yaml.Node) {
	anchored := map[*yaml.Node]bool{}
	var aliases []*yaml.Node
	var own func(n *yaml.Node)
	own = func(n *yaml.Node) {
		if n.Anchor != "" {
			anchored[n] = true
		}
		if n.Kind == yaml.AliasNode {
			aliases = append(aliases, n)
			return
		}
		for _, c := range n.Content {
			own(c)
		}
	}
	own(root)
	for _, a := range aliases {
		if !anchored[a.Alias] {
			foreign = append(foreign, a)
		}
	}
	if len(foreign) > 0 || len(aliases) == 0 {
		return foreign, nil
	}
	w := aliasWalk{size: map[*yaml.Node]int{}, added: b.added}
	w.expanded(root)
	b.added = w.added
	return nil, w.over
}

// aliasWalk sizes a document's nodes with their aliases expanded, each
// node once: the walk is linear in the document's own nodes, all of which
// check has seen to be in the document.
type aliasWalk struct {
	size  map[*yaml.Node]int // a node's size, its aliases expanded; -1 while counted
	added int
	over  *yaml.Node
}

func (w *aliasWalk) expanded(n *yaml.Node) int {
	if n == nil || w.over != nil {
		return 0
	}
	if s, ok := w.size[n]; ok {
		if s < 0 {
			return 0 // an anchor that contains its alias: yaml.v3 refuses it first
		}
		return s
	}
	w.size[n] = -1
	s := 1
	if n.Kind == yaml.AliasNode {
		// The alias stands for its anchor's node, which is also
		// counted where it stands.
		s = w.expanded(n.Alias)
		w.added += s
		if w.added > maxAliasNodes && w.over == nil {
			w.over = n
		}
	} else {
		for _, c := range n.Content {
			s += w.expanded(c)
		}
	}
	w.size[n] = s
	return s
}
