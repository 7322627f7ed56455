package node

import (
	"errors"
	"reflect"
	"testing"
)

func cands() []Candidate {
	return []Candidate{
		{Name: "a", Worker: true, Alive: true, MemFree: 4 << 30},
		{Name: "b", Worker: true, Alive: true, MemFree: 8 << 30},
		{Name: "c", Worker: true, Alive: true, MemFree: 6 << 30},
		{Name: "w", Worker: false, Alive: true, MemFree: 64 << 30},
		{Name: "d", Worker: true, Alive: false, MemFree: 32 << 30},
		{Name: "e", Worker: true, Alive: true, Drained: true, MemFree: 32 << 30},
	}
}

func TestChooseOP(t *testing.T) {
	for _, tc := range []struct{ pref, want string }{
		{"a", "a"}, {"w", "b"}, {"d", "b"}, {"e", "b"}, {"zz", "b"},
	} {
		got, err := ChooseOP(tc.pref, cands())
		if err != nil || got != tc.want {
			t.Errorf("ChooseOP(%q) = %q, %v; want %q", tc.pref, got, err, tc.want)
		}
	}
	_, err := ChooseOP("w", []Candidate{{Name: "w", Alive: true}})
	if !errors.Is(err, ErrNoPlacement) {
		t.Fatalf("err = %v, want ErrNoPlacement", err)
	}
}

func TestPlaceClones(t *testing.T) {
	cs := cands()
	if got := PlaceClones("a", 2, nil, cs); !reflect.DeepEqual(got, []string{"b", "c"}) {
		t.Errorf("fresh = %v", got)
	}
	// A healthy current clone stays even if another has more memory.
	if got := PlaceClones("b", 1, []string{"a"}, cs); !reflect.DeepEqual(got, []string{"a"}) {
		t.Errorf("sticky = %v", got)
	}
	// A dead or drained clone is replaced; the OP is never its own clone.
	if got := PlaceClones("a", 2, []string{"d", "e", "a"}, cs); !reflect.DeepEqual(got, []string{"b", "c"}) {
		t.Errorf("replace = %v", got)
	}
	// Too small a cluster: fewer clones, no duplicates.
	if got := PlaceClones("a", 5, nil, cs); !reflect.DeepEqual(got, []string{"b", "c"}) {
		t.Errorf("small cluster = %v", got)
	}
	if got := PlaceClones("a", 0, []string{"b"}, cs); len(got) != 0 {
		t.Errorf("zero replicas = %v", got)
	}
}
