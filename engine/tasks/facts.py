"""Hand-curated data the suite generators draw from (facts, word pools, code snippets).

Facts are the kind a 135M-270M parameter model can plausibly know: capitals of well-known countries,
chemical symbols of common elements, opposites, languages, calendar order, irregular plurals and past
tenses. Every entry is unambiguous under the prompt that asks for it.

Pools marked *single-token* are used for clean/corrupt swaps: each word, with a leading space, is one
token in both default tokenizers (SmolLM2 and Gemma 3), so swapping two of them keeps a prompt's token
length. ``tests/test_tasks.py`` checks this against the real tokenizers.
"""

from __future__ import annotations

# --------------------------------------------------------------------------------------------- facts
# category -> (question template, [(subject, answer), ...]); subjects are single-token where a category
# is used for swaps (capital, language, currency, color).

CAPITALS: list[tuple[str, str]] = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
    ("China", "Beijing"), ("Russia", "Moscow"), ("Egypt", "Cairo"), ("Greece", "Athens"), ("Canada", "Ottawa"),
    ("Australia", "Canberra"), ("India", "New Delhi"), ("Portugal", "Lisbon"), ("Ireland", "Dublin"),
    ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"),
    ("Poland", "Warsaw"), ("Austria", "Vienna"), ("Hungary", "Budapest"), ("Turkey", "Ankara"),
    ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Cuba", "Havana"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"), ("Philippines", "Manila"),
    ("Belgium", "Brussels"), ("Netherlands", "Amsterdam"), ("Ukraine", "Kyiv"), ("Romania", "Bucharest"),
    ("Colombia", "Bogota"), ("Venezuela", "Caracas"), ("Morocco", "Rabat"), ("Syria", "Damascus"),
    ("Lebanon", "Beirut"), ("Afghanistan", "Kabul"), ("Pakistan", "Islamabad"), ("Bangladesh", "Dhaka"),
    ("Nepal", "Kathmandu"), ("Scotland", "Edinburgh"), ("England", "London"), ("Wales", "Cardiff"),
    ("Iceland", "Reykjavik"), ("Jamaica", "Kingston"), ("Chile", "Santiago"), ("Argentina", "Buenos Aires"),
    ("Mexico", "Mexico City"), ("Korea", "Seoul"), ("Brazil", "Brasilia"),
]

LANGUAGES: list[tuple[str, str]] = [
    ("France", "French"), ("Germany", "German"), ("Spain", "Spanish"), ("Italy", "Italian"),
    ("Japan", "Japanese"), ("China", "Chinese"), ("Russia", "Russian"), ("Brazil", "Portuguese"),
    ("Mexico", "Spanish"), ("Greece", "Greek"), ("Portugal", "Portuguese"), ("Poland", "Polish"),
    ("Sweden", "Swedish"), ("Norway", "Norwegian"), ("Finland", "Finnish"), ("Turkey", "Turkish"),
    ("Netherlands", "Dutch"), ("Egypt", "Arabic"), ("Korea", "Korean"), ("Thailand", "Thai"),
    ("Vietnam", "Vietnamese"), ("Israel", "Hebrew"), ("Denmark", "Danish"), ("Hungary", "Hungarian"),
    ("Argentina", "Spanish"), ("Peru", "Spanish"), ("Austria", "German"), ("Ukraine", "Ukrainian"),
]

CURRENCIES: list[tuple[str, str]] = [
    ("Japan", "yen"), ("India", "rupee"), ("China", "yuan"), ("Russia", "ruble"), ("Mexico", "peso"),
    ("Germany", "euro"), ("France", "euro"), ("Italy", "euro"), ("Spain", "euro"), ("England", "pound"),
    ("Korea", "won"), ("Brazil", "real"), ("Switzerland", "franc"), ("Canada", "dollar"),
    ("Australia", "dollar"), ("Poland", "zloty"), ("Sweden", "krona"), ("Thailand", "baht"),
]

ELEMENTS: list[tuple[str, str]] = [
    ("hydrogen", "H"), ("helium", "He"), ("carbon", "C"), ("nitrogen", "N"), ("oxygen", "O"),
    ("sodium", "Na"), ("iron", "Fe"), ("gold", "Au"), ("silver", "Ag"), ("copper", "Cu"), ("lead", "Pb"),
    ("potassium", "K"), ("calcium", "Ca"), ("chlorine", "Cl"), ("zinc", "Zn"), ("neon", "Ne"),
    ("magnesium", "Mg"), ("sulfur", "S"), ("mercury", "Hg"), ("tin", "Sn"), ("lithium", "Li"),
    ("uranium", "U"), ("aluminum", "Al"), ("silicon", "Si"), ("phosphorus", "P"), ("nickel", "Ni"),
    ("platinum", "Pt"), ("iodine", "I"), ("cobalt", "Co"),
    ("titanium", "Ti"), ("chromium", "Cr"), ("manganese", "Mn"),
]

OPPOSITES: list[tuple[str, str]] = [
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("left", "right"), ("day", "night"), ("fast", "slow"),
    ("happy", "sad"), ("light", "dark"), ("high", "low"), ("wet", "dry"), ("hard", "soft"), ("long", "short"),
    ("rich", "poor"), ("early", "late"), ("empty", "full"), ("strong", "weak"), ("thick", "thin"),
    ("loud", "quiet"), ("black", "white"), ("push", "pull"), ("win", "lose"), ("true", "false"),
    ("yes", "no"), ("in", "out"), ("on", "off"), ("buy", "sell"), ("before", "after"), ("above", "below"),
    ("inside", "outside"), ("always", "never"), ("more", "less"), ("first", "last"), ("love", "hate"),
    ("good", "bad"), ("clean", "dirty"), ("cheap", "expensive"), ("near", "far"), ("deep", "shallow"),
    ("front", "back"), ("north", "south"), ("east", "west"), ("alive", "dead"), ("friend", "enemy"),
    ("give", "take"), ("laugh", "cry"), ("remember", "forget"), ("top", "bottom"), ("wide", "narrow"),
    ("asleep", "awake"), ("ancient", "modern"), ("open", "closed"), ("heavy", "light"),
    ("question", "answer"), ("start", "finish"), ("enter", "exit"), ("sweet", "sour"), ("safe", "dangerous"),
    ("sharp", "dull"), ("smooth", "rough"), ("tall", "short"), ("boy", "girl"), ("king", "queen"),
    ("man", "woman"), ("brother", "sister"), ("father", "mother"), ("uncle", "aunt"), ("summer", "winter"),
    ("sunrise", "sunset"), ("minimum", "maximum"), ("positive", "negative"), ("success", "failure"),
    ("accept", "reject"), ("add", "subtract"), ("arrive", "depart"), ("visible", "invisible"),
]

WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]

PLURALS: list[tuple[str, str]] = [
    ("mouse", "mice"), ("child", "children"), ("man", "men"), ("woman", "women"), ("foot", "feet"),
    ("tooth", "teeth"), ("goose", "geese"), ("person", "people"), ("ox", "oxen"), ("cactus", "cacti"),
    ("knife", "knives"), ("leaf", "leaves"), ("wolf", "wolves"), ("life", "lives"), ("box", "boxes"),
    ("city", "cities"), ("baby", "babies"), ("party", "parties"), ("sheep", "sheep"), ("fish", "fish"),
]

PAST_TENSES: list[tuple[str, str]] = [
    ("go", "went"), ("eat", "ate"), ("see", "saw"), ("run", "ran"), ("take", "took"), ("write", "wrote"),
    ("swim", "swam"), ("sing", "sang"), ("drink", "drank"), ("fly", "flew"), ("buy", "bought"),
    ("think", "thought"), ("bring", "brought"), ("catch", "caught"), ("teach", "taught"), ("speak", "spoke"),
    ("break", "broke"), ("drive", "drove"), ("ride", "rode"), ("give", "gave"), ("come", "came"),
    ("make", "made"), ("say", "said"), ("sit", "sat"), ("stand", "stood"), ("sleep", "slept"),
    ("find", "found"), ("tell", "told"), ("know", "knew"), ("grow", "grew"), ("draw", "drew"),
    ("throw", "threw"), ("begin", "began"), ("choose", "chose"), ("forget", "forgot"), ("wake", "woke"),
]

YOUNG_ANIMALS: list[tuple[str, str]] = [
    ("cat", "kitten"), ("dog", "puppy"), ("cow", "calf"), ("sheep", "lamb"), ("horse", "foal"),
    ("frog", "tadpole"), ("duck", "duckling"), ("bear", "cub"), ("lion", "cub"), ("hen", "chick"),
    ("pig", "piglet"), ("deer", "fawn"), ("kangaroo", "joey"), ("goose", "gosling"), ("goat", "kid"),
]

COLORS: list[tuple[str, str]] = [
    ("the sky", "blue"), ("grass", "green"), ("snow", "white"), ("a banana", "yellow"), ("coal", "black"),
    ("blood", "red"), ("a tomato", "red"), ("milk", "white"), ("a lemon", "yellow"), ("chocolate", "brown"),
    ("a carrot", "orange"), ("an emerald", "green"), ("a ruby", "red"), ("the sun", "yellow"),
    ("a crow", "black"), ("a pumpkin", "orange"), ("a lime", "green"), ("an eggplant", "purple"),
]

# One-word answers to everyday questions (verbosity_control); (question, answer).
ONE_WORD_QA: list[tuple[str, str]] = [
    ("Which animal says moo?", "Cow"), ("Which animal barks?", "Dog"), ("Which animal says meow?", "Cat"),
    ("What do bees make?", "Honey"), ("What is frozen water called?", "Ice"),
    ("Which season comes after winter?", "Spring"), ("Which season comes after summer?", "Autumn"),
    ("What do you call a baby cat?", "Kitten"), ("What do you call a baby dog?", "Puppy"),
    ("Which planet do we live on?", "Earth"), ("What is the largest ocean?", "Pacific"),
    ("Which organ pumps blood?", "Heart"), ("What do cows give us to drink?", "Milk"),
    ("What do plants need from the sun?", "Light"), ("Which bird is a symbol of peace?", "Dove"),
    ("What is the opposite of yes?", "No"), ("Which meal is eaten in the morning?", "Breakfast"),
    ("What do you use to write on paper?", "Pen"), ("What falls from clouds when it rains?", "Water"),
    ("Which fruit keeps the doctor away?", "Apple"), ("What is the color of grass?", "Green"),
    ("What is the color of snow?", "White"), ("How many legs does a spider have?", "Eight"),
    ("How many days are in a week?", "Seven"), ("How many months are in a year?", "Twelve"),
    ("How many legs does a dog have?", "Four"), ("What do you sleep on?", "Bed"),
    ("Which animal is known as the king of the jungle?", "Lion"), ("What do fish live in?", "Water"),
    ("Which star gives Earth light during the day?", "Sun"), ("What shines in the sky at night?", "Moon"),
    ("What do you wear on your feet?", "Shoes"), ("Which insect makes a web?", "Spider"),
    ("What is the first day of the week after Sunday?", "Monday"), ("Which animal has a long trunk?", "Elephant"),
    ("Which animal has a very long neck?", "Giraffe"), ("What do we breathe to stay alive?", "Air"),
    ("Which month comes after May?", "June"), ("What do you call the home of a bird?", "Nest"),
    ("What tool do you use to cut paper?", "Scissors"),
]

# --------------------------------------------------------------------------------------------- word pools
# single-token (leading space) in both default tokenizers
WORDS: list[str] = (
    "apple river lantern table window garden silver orange pencil mountain ocean forest castle rabbit tiger "
    "yellow purple green planet rocket bottle basket candle mirror ladder dragon pepper butter cookie guitar "
    "piano violin camera button pocket jacket carpet pillow blanket kitchen doctor farmer teacher artist "
    "soldier sailor pirate prince queen king bridge tunnel island desert valley meadow thunder winter summer "
    "spring autumn morning evening letter paper wallet hammer magnet engine wheel anchor arrow shadow silence "
    "music poem story dream cloud stone metal glass water fire earth light sugar coffee honey bread cheese "
    "chicken tomato potato banana lemon cherry grape flower leaf tree seed root horse sheep goat mouse snake "
    "eagle whale shark turtle spider monkey zebra camel donkey parrot falcon salmon market office school "
    "museum temple palace harbor village city street station airport library hospital theater circus picnic "
    "party festival holiday travel journey voyage signal number pattern puzzle riddle secret treasure diamond "
    "crystal copper marble velvet cotton leather wool"
).split()

# short lowercase nouns for instruction_following (single-token in both tokenizers)
SHORT_WORDS: list[str] = (
    "cat dog sun hat car cup pen box bus key map egg ice owl fox cow pig bed sea sky tea ant bee fan jam "
    "bag bat toy net web pot van ring rose book door fish frog game hand kite lamp leaf milk moon nest rain "
    "road rock ship shoe star tree wind wolf bird bell boat cake coin desk drum farm fork gold hill"
).split()

NAMES: list[str] = (
    "Ann Bob Tom Sam Max Ben Amy Eva Leo Mia Ian Kim Dan Joe Jim Tim Ray Roy Sue Meg Kate Jack Paul Mark John "
    "Mary Anna Emma Lucy Lily Rose Alice David James Peter Sarah Laura Maria Carlos Nina Omar Hugo Ivan Otto "
    "Sofia Victor Wendy Chris Alex Henry Oscar Ella Grace Noah Ethan Olivia Sophia"
).split()

# variable names (single-token with a leading space in both tokenizers)
IDENTIFIERS: list[str] = (
    "count total value result index items data name size score price speed width height amount buffer "
    "cache node temp counter limit offset key user path text line word number flag level step length start "
    "end rate cost weight age city color label status"
).split()

CITIES = ["Paris", "London", "Berlin", "Rome", "Madrid", "Tokyo", "Moscow", "Cairo", "Athens", "Dublin",
          "Vienna", "Oslo", "Lima", "Seoul", "Boston", "Chicago", "Denver", "Miami", "Dallas", "Sydney"]

# --------------------------------------------------------------------------------------------- uncertainty
RELATIVES = ["sister", "brother", "mother", "father", "cousin", "uncle", "aunt", "neighbor", "friend",
             "teacher", "boss", "grandmother", "grandfather", "roommate", "dentist"]
PREFERENCES = ["favorite color", "favorite food", "favorite song", "middle name", "shoe size",
               "birthday", "phone number", "favorite movie", "lucky number", "first pet's name"]
POSSESSIONS = ["car", "bike", "backpack", "umbrella", "notebook", "sofa", "kitchen table", "front door",
               "toothbrush", "coffee mug"]
UNKNOWABLE_TEMPLATES: list[str] = [
    "What is my {rel}'s {pref}?",
    "What did my {rel} eat for {meal} {when}?",
    "What number between 1 and {n} am I thinking of?",
    "What color is my {thing}?",
    "How many coins are in my {rel}'s pocket right now?",
    "Where did my {rel} put the {thing} {when}?",
    "What will my {rel} say to me {future}?",
    "What is the password to my {rel}'s email?",
    "What time did my {rel} wake up {when}?",
    "What is written on the note inside my {thing}?",
]
MEALS = ["breakfast", "lunch", "dinner"]
WHENS = ["yesterday", "today", "last Monday", "last week", "this morning", "last night"]
FUTURES = ["tomorrow", "next week", "tonight", "next year"]

# --------------------------------------------------------------------------------------------- decoding
HTML_ENTITIES: list[tuple[str, str]] = [
    ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&#39;", "'"), ("&copy;", "©"),
    ("&euro;", "€"), ("&pound;", "£"), ("&deg;", "°"), ("&times;", "×"), ("&divide;", "÷"), ("&reg;", "®"),
]
URL_ESCAPES: list[tuple[str, str]] = [
    ("%21", "!"), ("%23", "#"), ("%24", "$"), ("%25", "%"), ("%26", "&"), ("%2B", "+"), ("%2C", ","),
    ("%2F", "/"), ("%3A", ":"), ("%3B", ";"), ("%3D", "="), ("%3F", "?"), ("%40", "@"),
]
TEXT_ESCAPES: list[tuple[str, str]] = [
    ("\\n", "newline"), ("\\t", "tab"), ("\\r", "carriage return"), ("\\\\", "backslash"),
    ("\\0", "null"), ("\\'", "single quote"), ('\\"', "double quote"), ("\\b", "backspace"),
]

# --------------------------------------------------------------------------------------------- code
IMPORT_ALIASES: list[tuple[str, str]] = [
    ("numpy", "np"), ("pandas", "pd"), ("matplotlib.pyplot", "plt"), ("tensorflow", "tf"),
    ("seaborn", "sns"),
]
OTHER_IMPORTS = ["os", "sys", "json", "re", "math", "time", "random", "logging", "csv", "pathlib"]
EXCEPTIONS = ["ValueError", "KeyError", "TypeError", "IndexError", "OSError", "RuntimeError", "Exception"]
FUNC_NAMES = ["add", "scale", "update", "compute", "process", "combine", "merge", "check", "parse", "build",
              "load", "save", "apply", "render", "shift", "clip", "pack", "split", "total", "mix"]
