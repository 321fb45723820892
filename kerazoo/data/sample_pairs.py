"""An embedded English–Spanish sample for translation: sentences generated from a small bilingual grammar."""

import numpy as np

# English subject, Spanish subject, verb person (0 = yo, 1 = tú, 2 = él/ella, 3 = nosotros, 4 = ellos).
_SUBJECTS = [("I", "Yo", 0), ("You", "Tú", 1), ("He", "Él", 2), ("She", "Ella", 2), ("We", "Nosotros", 3),
             ("They", "Ellos", 4), ("The boy", "El niño", 2), ("The girl", "La niña", 2),
             ("My mother", "Mi madre", 2), ("Our friends", "Nuestros amigos", 4)]
# English base form, English third person, Spanish forms by person.
_VERBS = [("see", "sees", "veo ves ve vemos ven"), ("want", "wants", "quiero quieres quiere queremos quieren"),
          ("have", "has", "tengo tienes tiene tenemos tienen"), ("buy", "buys", "compro compras compra compramos compran"),
          ("need", "needs", "necesito necesitas necesita necesitamos necesitan"),
          ("like", "likes", "aprecio aprecias aprecia apreciamos aprecian")]
_NOUNS = [("house", "casa", "f"), ("car", "coche", "m"), ("book", "libro", "m"), ("apple", "manzana", "f"),
          ("table", "mesa", "f"), ("letter", "carta", "f"), ("door", "puerta", "f"), ("window", "ventana", "f"),
          ("chair", "silla", "f"), ("bicycle", "bicicleta", "f"), ("phone", "teléfono", "m"), ("hat", "sombrero", "m")]
# English, Spanish masculine, Spanish feminine. Spanish puts them after the noun.
_ADJECTIVES = [("red", "rojo", "roja"), ("small", "pequeño", "pequeña"), ("new", "nuevo", "nueva"),
               ("old", "viejo", "vieja"), ("white", "blanco", "blanca"), ("beautiful", "bonito", "bonita"),
               ("big", "grande", "grande"), ("green", "verde", "verde")]
_ARTICLES = {("the", "m"): "el", ("the", "f"): "la", ("a", "m"): "un", ("a", "f"): "una"}


def sample_pairs(size=3000, seed=0):
    """English–Spanish sentence pairs from a small grammar, for offline demos and tests.

    Subject, verb (conjugated on both sides), optional negation, article
    (gender agreement), noun and optional adjective (after the noun in
    Spanish): "She does not want the red car." → "Ella no quiere el coche rojo."
    About 90,000 distinct sentences are possible; pairs are drawn at random.

    Args:
        size: number of pairs.
        seed: random seed.

    Returns:
        `(english, spanish)`: two lists of `size` str.

    Example:

    >>> english, spanish = sample_pairs(2)
    >>> len(english), len(spanish)
    (2, 2)
    """
    rng = np.random.default_rng(seed)
    english, spanish = [], []
    for _ in range(size):
        subject_en, subject_es, person = _SUBJECTS[rng.integers(len(_SUBJECTS))]
        base, third, forms = _VERBS[rng.integers(len(_VERBS))]
        noun_en, noun_es, gender = _NOUNS[rng.integers(len(_NOUNS))]
        article = ("the", "a")[rng.integers(2)]
        third_person = person == 2
        verb_es = forms.split()[person]
        if rng.random() < 0.3:
            verb_en = f"{'does' if third_person else 'do'} not {base}"
            verb_es = f"no {verb_es}"
        else:
            verb_en = third if third_person else base
        noun_phrase_en, noun_phrase_es = noun_en, noun_es
        if rng.random() < 0.6:
            adjective = _ADJECTIVES[rng.integers(len(_ADJECTIVES))]
            noun_phrase_en = f"{adjective[0]} {noun_en}"
            noun_phrase_es = f"{noun_es} {adjective[1] if gender == 'm' else adjective[2]}"
        article_en = "an" if article == "a" and noun_phrase_en[0] in "aeiou" else article
        english.append(f"{subject_en} {verb_en} {article_en} {noun_phrase_en}.")
        spanish.append(f"{subject_es} {verb_es} {_ARTICLES[article, gender]} {noun_phrase_es}.")
    return english, spanish
