package gateway

import (
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// Soundex returns the American Soundex code of a name word (the algorithm
// of the US National Archives, as in Knuth, TAOCP vol. 3): its first letter
// and three digits for the consonant classes that follow, so that Smith and
// Smyth (S530), Robert and Rupert (R163) share a code. Letters are A-Z in
// either case, after latinFold (Müller and Muller are both M460, Élodie is
// E430); H and W do not separate two letters of one class, vowels (and Y)
// do. Any other character counts as a vowel. A word without any letter A-Z
// (山田, やまだ) has no code: "".
func Soundex(word string) string {
	word = latinFold(word)
	var code [4]byte
	n := 0
	var last byte // class digit of the previous letter; 0 after a vowel
	for i := 0; i < len(word) && n < 4; i++ {
		c := word[i]
		if c >= 'a' && c <= 'z' {
			c -= 'a' - 'A'
		}
		if c < 'A' || c > 'Z' {
			if n > 0 {
				last = 0 // a separator, like a vowel
			}
			continue
		}
		d := soundexClass[c-'A']
		if n == 0 {
			code[0], n, last = c, 1, d
			continue
		}
		switch d {
		case '0': // vowel or Y: separates letters of one class
			last = 0
		case 'h': // H and W: transparent
		default:
			if d != last {
				code[n] = d
				n++
			}
			last = d
		}
	}
	if n == 0 {
		return ""
	}
	for ; n < 4; n++ {
		code[n] = '0'
	}
	return string(code[:])
}

// soundexClass maps A-Z to its Soundex digit; '0' is a vowel (and Y), 'h'
// is H or W.
var soundexClass = [26]byte{
	'0', '1', '2', '3', '0', '1', '2', 'h', '0', '2', '2', '4', '5', // A-M
	'5', '0', '1', '2', '6', '2', '3', '0', '1', 'h', '2', '0', '2', // N-Z
}

// PhoneticKeyMark starts the phonetic entries (NamePhoneticKeys) where an
// index keeps them among its name keys: "\x02" then a word's Soundex code.
// No folded name word starts with a control character, so the entries never
// answer a name-prefix search.
const PhoneticKeyMark = "\x02"

// latinFold spells the Latin letters of s with diacritics as their base
// letters (canonical decomposition, combining marks dropped), and the few
// that do not decompose as their usual transliteration (ß → ss, Ł → L,
// Ø → O, Æ → AE, Œ → OE, Đ → D), so that names written with or without their
// accents share a Soundex code. ASCII is returned as it is, without
// allocating.
func latinFold(s string) string {
	ascii := true
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	if ascii {
		return s
	}
	var b strings.Builder
	for _, r := range norm.NFD.String(s) {
		if unicode.Is(unicode.Mn, r) {
			continue
		}
		if t, ok := latinLetters[r]; ok {
			b.WriteString(t)
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

var latinLetters = map[rune]string{
	'ß': "ss", 'ẞ': "SS", 'ł': "l", 'Ł': "L", 'ø': "o", 'Ø': "O", 'æ': "ae", 'Æ': "AE",
	'œ': "oe", 'Œ': "OE", 'đ': "d", 'Đ': "D", 'ð': "d", 'Ð': "D", 'þ': "th", 'Þ': "TH", 'ı': "i",
}
