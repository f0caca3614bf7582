//! A café-and-shop catalogue for realistic baskets: ~50 products with prices in RUB and the
//! categories the ready-made programs know (`sale` for demo-cafe.yaml's exclusion, `coffee`
//! and `desserts` for coffee-shop.yaml).

use kopilka_proto::types::BasketLine;
use rand::Rng;

/// One product: id, name, unit price (RUB, 2 decimals as text), categories, sold by weight.
pub struct Product {
    pub id: &'static str,
    pub name: &'static str,
    pub price: &'static str,
    pub categories: &'static [&'static str],
    pub weighted: bool,
    /// Relative popularity.
    pub weight: u32,
}

const fn p(
    id: &'static str,
    name: &'static str,
    price: &'static str,
    categories: &'static [&'static str],
    weight: u32,
) -> Product {
    Product {
        id,
        name,
        price,
        categories,
        weighted: false,
        weight,
    }
}

const fn w(
    id: &'static str,
    name: &'static str,
    price: &'static str,
    categories: &'static [&'static str],
    weight: u32,
) -> Product {
    Product {
        id,
        name,
        price,
        categories,
        weighted: true,
        weight,
    }
}

/// The catalogue.
pub const PRODUCTS: &[Product] = &[
    p("espresso", "Эспрессо", "120.00", &["coffee", "drinks"], 30),
    p(
        "americano",
        "Американо",
        "150.00",
        &["coffee", "drinks"],
        40,
    ),
    p(
        "cappuccino",
        "Капучино",
        "190.00",
        &["coffee", "drinks"],
        50,
    ),
    p("latte", "Латте", "210.00", &["coffee", "drinks"], 50),
    p(
        "flat-white",
        "Флэт уайт",
        "230.00",
        &["coffee", "drinks"],
        25,
    ),
    p("raf", "Раф", "250.00", &["coffee", "drinks"], 20),
    p("mocha", "Мокко", "240.00", &["coffee", "drinks"], 10),
    p("cold-brew", "Колд брю", "220.00", &["coffee", "drinks"], 10),
    p("black-tea", "Чай чёрный", "130.00", &["tea", "drinks"], 15),
    p("green-tea", "Чай зелёный", "130.00", &["tea", "drinks"], 12),
    p(
        "herbal-tea",
        "Чай травяной",
        "150.00",
        &["tea", "drinks"],
        8,
    ),
    p("cocoa", "Какао", "180.00", &["drinks"], 10),
    p(
        "orange-juice",
        "Сок апельсиновый",
        "210.00",
        &["drinks"],
        10,
    ),
    p("lemonade", "Лимонад", "190.00", &["drinks"], 10),
    p("water", "Вода 0,5", "80.00", &["drinks", "shop"], 15),
    p("croissant", "Круассан", "120.00", &["bakery"], 35),
    p(
        "almond-croissant",
        "Круассан миндальный",
        "180.00",
        &["bakery"],
        15,
    ),
    p(
        "pain-au-chocolat",
        "Пан-о-шоколя",
        "150.00",
        &["bakery"],
        15,
    ),
    p(
        "cinnamon-roll",
        "Синнабон",
        "170.00",
        &["bakery", "desserts"],
        15,
    ),
    p("muffin", "Маффин", "140.00", &["bakery", "desserts"], 15),
    p("bagel", "Бейгл с лососем", "340.00", &["food"], 10),
    p(
        "sandwich-ham",
        "Сэндвич с ветчиной",
        "290.00",
        &["food"],
        15,
    ),
    p("sandwich-veg", "Сэндвич овощной", "260.00", &["food"], 10),
    p("panini", "Панини", "320.00", &["food"], 10),
    p("quiche", "Киш лорен", "310.00", &["food"], 8),
    p("soup", "Суп дня", "280.00", &["food"], 10),
    p("salad-caesar", "Салат цезарь", "390.00", &["food"], 10),
    p("porridge", "Каша овсяная", "220.00", &["food"], 8),
    p("syrniki", "Сырники", "320.00", &["food"], 10),
    p("omelette", "Омлет", "290.00", &["food"], 6),
    p("cheesecake", "Чизкейк", "290.00", &["desserts"], 15),
    p("tiramisu", "Тирамису", "320.00", &["desserts"], 10),
    p("eclair", "Эклер", "150.00", &["desserts"], 12),
    p("macaron", "Макарон", "90.00", &["desserts"], 15),
    p("brownie", "Брауни", "160.00", &["desserts"], 10),
    p("napoleon", "Наполеон", "240.00", &["desserts"], 8),
    p("cookie", "Печенье", "70.00", &["desserts", "shop"], 12),
    p(
        "yesterday-croissant",
        "Круассан вчерашний",
        "60.00",
        &["bakery", "sale"],
        6,
    ),
    p(
        "sale-cake",
        "Торт со скидкой",
        "150.00",
        &["desserts", "sale"],
        4,
    ),
    p(
        "sale-sandwich",
        "Сэндвич по акции",
        "150.00",
        &["food", "sale"],
        5,
    ),
    w(
        "coffee-beans",
        "Кофе в зёрнах (кг)",
        "1800.00",
        &["coffee", "shop"],
        5,
    ),
    w(
        "ground-coffee",
        "Кофе молотый (кг)",
        "1600.00",
        &["coffee", "shop"],
        3,
    ),
    w(
        "loose-tea",
        "Чай листовой (кг)",
        "2400.00",
        &["tea", "shop"],
        2,
    ),
    w(
        "chocolate-bulk",
        "Шоколад весовой (кг)",
        "1500.00",
        &["desserts", "shop"],
        2,
    ),
    p(
        "drip-bags",
        "Дрип-пакеты 10 шт",
        "450.00",
        &["coffee", "shop"],
        4,
    ),
    p(
        "thermo-mug",
        "Термокружка",
        "1290.00",
        &["merch", "shop"],
        2,
    ),
    p("cup", "Чашка с логотипом", "690.00", &["merch", "shop"], 2),
    p("syrup", "Сироп", "40.00", &["extras"], 15),
    p(
        "oat-milk",
        "Альтернативное молоко",
        "60.00",
        &["extras"],
        15,
    ),
    p(
        "extra-shot",
        "Доп. шот эспрессо",
        "50.00",
        &["extras", "coffee"],
        10,
    ),
    p(
        "gift-card-sale",
        "Сувенир распродажа",
        "300.00",
        &["merch", "sale"],
        1,
    ),
];

fn pick<R: Rng>(rng: &mut R) -> &'static Product {
    let total: u32 = PRODUCTS.iter().map(|p| p.weight).sum();
    let mut roll = rng.random_range(0..total);
    for product in PRODUCTS {
        if roll < product.weight {
            return product;
        }
        roll -= product.weight;
    }
    &PRODUCTS[0]
}

/// A basket of 1 to 12 lines, mostly small (a coffee and a pastry), sometimes large.
pub fn basket<R: Rng>(rng: &mut R) -> Vec<BasketLine> {
    // 1–3 lines most of the time, up to 12 now and then.
    let n = match rng.random_range(0..100) {
        0..=34 => 1,
        35..=64 => 2,
        65..=79 => 3,
        80..=89 => rng.random_range(4..=6),
        _ => rng.random_range(7..=12),
    };
    let mut lines: Vec<BasketLine> = Vec::with_capacity(n);
    while lines.len() < n {
        let product = pick(rng);
        if lines.iter().any(|l| l.product_id == product.id) {
            // The same product twice is one line with a larger quantity.
            if let Some(line) = lines.iter_mut().find(|l| l.product_id == product.id) {
                if !product.weighted {
                    let q: u32 = line.quantity.parse().unwrap_or(1);
                    line.quantity = (q + 1).to_string();
                }
            }
            if rng.random_bool(0.5) {
                continue;
            }
            break;
        }
        let quantity = if product.weighted {
            // 0.100–1.000 kg in grams.
            let grams: u32 = rng.random_range(100..=1000);
            format!("{}.{:03}", grams / 1000, grams % 1000)
        } else if rng.random_bool(0.15) {
            rng.random_range(2..=3u32).to_string()
        } else {
            "1".to_owned()
        };
        lines.push(BasketLine {
            line_id: (lines.len() + 1).to_string(),
            product_id: product.id.to_owned(),
            sku: product.id.to_owned(),
            name: product.name.to_owned(),
            category_ids: product.categories.iter().map(|c| (*c).to_owned()).collect(),
            unit_price: product.price.to_owned(),
            quantity,
            amount: String::new(),
            weighted: product.weighted,
        });
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rust_decimal::Decimal;
    use std::str::FromStr;

    #[test]
    fn baskets_are_valid() {
        assert!(PRODUCTS.len() >= 50);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..2000 {
            let b = basket(&mut rng);
            assert!((1..=12).contains(&b.len()));
            for (i, line) in b.iter().enumerate() {
                assert_eq!(line.line_id, (i + 1).to_string());
                let q = Decimal::from_str(&line.quantity).unwrap();
                assert!(q > Decimal::ZERO && q.scale() <= 3);
                let p = Decimal::from_str(&line.unit_price).unwrap();
                assert!(p > Decimal::ZERO && p.scale() <= 2);
            }
            let mut ids: Vec<_> = b.iter().map(|l| &l.product_id).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), b.len());
        }
        let mut ids: Vec<_> = PRODUCTS.iter().map(|p| p.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), PRODUCTS.len());
    }
}
