package synth

import "fmt"

// Person is one synthetic patient made by GeneratedPerson. The names are
// common British surnames and given names combined at random: no real
// patient's data is ever used.
type Person struct{ Name, ID, BirthDate, Sex string }

var (
	surnames = []string{
		"Smith", "Smithson", "Smithers", "Jones", "Williams", "Taylor", "Brown", "Davies", "Evans", "Wilson",
		"Thomas", "Johnson", "Roberts", "Robinson", "Thompson", "Wright", "Walker", "White", "Edwards", "Hughes",
		"Green", "Hall", "Lewis", "Harris", "Clarke", "Patel", "Jackson", "Wood", "Turner", "Martin",
		"Cooper", "Hill", "Ward", "Morris", "Moore", "Clark", "Lee", "King", "Baker", "Harrison",
		"Morgan", "Allen", "James", "Scott", "Phillips", "Watson", "Davis", "Parker", "Price", "Bennett",
		"Young", "Griffiths", "Mitchell", "Kelly", "Cook", "Carter", "Richardson", "Bailey", "Collins", "Bell",
		"Shaw", "Murphy", "Miller", "Cox", "Richards", "Khan", "Marshall", "Anderson", "Simpson", "Ellis",
		"Adams", "Singh", "Begum", "Wilkinson", "Foster", "Chapman", "Powell", "Webb", "Rogers", "Gray",
		"Mason", "Ali", "Hunt", "Hussain", "Campbell", "Matthews", "Owen", "Palmer", "Holmes", "Mills",
		"Llewellyn", "Pryce", "Okafor", "Müller", "Ashcombe", "Vaughan", "Rees", "Powys", "Gwynne", "Bevan",
	}
	femaleNames = []string{
		"Olivia", "Amelia", "Isla", "Ava", "Mia", "Ivy", "Lily", "Isabella", "Rosie", "Sophia",
		"Grace", "Freya", "Florence", "Poppy", "Evie", "Elsie", "Bronwen", "Gwenllian", "Sian", "Margaret",
	}
	maleNames = []string{
		"Oliver", "George", "Noah", "Arthur", "Harry", "Leo", "Muhammad", "Jack", "Charlie", "Oscar",
		"Jacob", "Henry", "Thomas", "Freddie", "Alfie", "Theo", "Dafydd", "Rhys", "Chidi", "Jürgen",
	}
)

// mix spreads consecutive numbers over the whole uint64 range
// (SplitMix64 finaliser), so neighbouring people differ in every field.
func mix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// GeneratedPerson returns the synthetic patient number n: the same n always
// gives the same person, and different n give different patient IDs
// ("GEN" and n), with names, birth dates (1930–2019) and sex spread over n.
func GeneratedPerson(n uint64) Person {
	h := mix(n)
	sex, given := "F", femaleNames
	if h&1 == 1 {
		sex, given = "M", maleNames
	}
	surname := surnames[(h>>8)%uint64(len(surnames))]
	first := given[(h>>24)%uint64(len(given))]
	year := 1930 + (h>>32)%90
	month := 1 + (h>>40)%12
	day := 1 + (h>>48)%28
	return Person{
		Name:      surname + "^" + first,
		ID:        fmt.Sprintf("GEN%08d", n),
		BirthDate: fmt.Sprintf("%04d%02d%02d", year, month, day),
		Sex:       sex,
	}
}

// Surnames returns the surnames GeneratedPerson draws from, for queries
// that need names known to exist.
func Surnames() []string { return append([]string(nil), surnames...) }
