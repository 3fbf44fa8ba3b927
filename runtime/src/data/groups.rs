//! Many/Medium/Few class groups for per-group accuracy (METHOD.md §4).

/// The reference's class groups: by training count, head to tail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Group {
    Many,
    Medium,
    Few,
}

impl Group {
    pub const ALL: [Group; 3] = [Group::Many, Group::Medium, Group::Few];

    pub fn name(self) -> &'static str {
        match self {
            Group::Many => "many",
            Group::Medium => "medium",
            Group::Few => "few",
        }
    }
}

/// CIFAR's groups: classes sorted by training count split into thirds with the reference's
/// index arithmetic, `t = C / 3`: Few `sorted[..t]`, Medium `sorted[t..2t]`, Many `sorted[2t..]`
/// (100 classes: 33/33/34; 10 classes: 3/3/4). Ties keep label order (a stable sort), which
/// never matters for the exp or step profiles at the boundaries.
pub fn groups_by_thirds(train_counts: &[usize]) -> Vec<Group> {
    let mut order: Vec<usize> = (0..train_counts.len()).collect();
    order.sort_by_key(|&class| train_counts[class]);
    let third = train_counts.len() / 3;
    let mut groups = vec![Group::Many; train_counts.len()];
    for (rank, &class) in order.iter().enumerate() {
        groups[class] = match rank {
            r if r < third => Group::Few,
            r if r < 2 * third => Group::Medium,
            _ => Group::Many,
        };
    }
    groups
}

/// ImageNet-LT/Places-LT's groups: Many > 100 training images, Medium 20..=100, Few < 20.
pub fn groups_by_thresholds(train_counts: &[usize]) -> Vec<Group> {
    train_counts
        .iter()
        .map(|&count| match count {
            c if c > 100 => Group::Many,
            c if c >= 20 => Group::Medium,
            _ => Group::Few,
        })
        .collect()
}

/// Classes per group, `[many, medium, few]`.
pub fn group_sizes(groups: &[Group]) -> [usize; 3] {
    let count = |g: Group| groups.iter().filter(|&&x| x == g).count();
    [count(Group::Many), count(Group::Medium), count(Group::Few)]
}
