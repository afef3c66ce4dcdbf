/**
 * The embedded prompt set of `specula bench`: 32 grade-school math word problems written
 * for this project in the style of the bundled models' training data (GSM8K's
 * "Question: …\nAnswer:" format), so that the default study needs no dataset file.
 */
export const EMBEDDED_PROMPTS: readonly string[] = [
  'A baker makes 24 muffins in the morning and 18 in the afternoon. She sells 30 of them. How many muffins are left?',
  'Tom reads 15 pages of his book every day. How many pages does he read in 3 weeks?',
  'A box holds 6 rows of 8 chocolates. Maria eats 5 chocolates. How many chocolates are still in the box?',
  'Sam has $40. He buys 3 notebooks for $4 each and a pen for $2. How much money does he have left?',
  'A train travels 60 miles per hour for 3 hours and then 45 miles per hour for 2 hours. How far does it travel in total?',
  'There are 28 students in a class. Half of them walk to school and 6 ride the bus. The rest come by car. How many come by car?',
  'A garden has 5 rows of tomato plants with 9 plants in each row. Each plant gives 4 tomatoes. How many tomatoes are there?',
  'Lisa saves $12 every week. How many weeks does she need to save to buy a bike that costs $156?',
  'A farmer has 36 chickens. He sells a third of them and then buys 10 more. How many chickens does he have now?',
  'A pizza is cut into 8 slices. If 5 friends each eat 3 slices, how many pizzas do they need?',
  'John is 3 times as old as his son. His son is 12 years old. How old will John be in 5 years?',
  'A shop sells pencils at 3 for $1. How much do 27 pencils cost?',
  'Anna ran 2.5 miles on Monday, 3 miles on Tuesday and twice as far on Wednesday as on Monday. How many miles did she run?',
  'A water tank holds 500 liters. It is 40% full. How many more liters are needed to fill it?',
  'Each bag of apples weighs 3 kilograms. A truck carries 120 bags. How many kilograms of apples does the truck carry?',
  'A movie starts at 6:15 pm and lasts 2 hours and 50 minutes. At what time does it end?',
  'Ben buys 4 packs of cards with 12 cards each. He gives 9 cards to his sister. How many cards does he keep?',
  'A rectangle is 14 meters long and 9 meters wide. What is its perimeter?',
  'A library had 1,250 books. It bought 375 more and gave away 120. How many books does it have now?',
  'Kate earns $18 per hour and works 7 hours a day for 5 days. How much does she earn?',
  'A recipe needs 2 cups of flour for 12 cookies. How many cups of flour are needed for 30 cookies?',
  'There are 4 times as many red marbles as blue marbles in a jar. There are 45 marbles in all. How many are blue?',
  'A car uses 1 liter of fuel every 15 kilometers. How many liters does it need for a 255-kilometer trip?',
  'Mia has 3 dogs. Each dog eats 2 cups of food twice a day. How many cups of food do the dogs eat in a week?',
  'A school orders 15 boxes of markers with 24 markers in each box. The markers are shared equally among 9 classes. How many markers does each class get?',
  'A store discounts a $80 jacket by 25%. What is the new price?',
  'Leo swims 20 laps on weekdays and 35 laps on each weekend day. How many laps does he swim in a week?',
  'A bus has 48 seats. 29 people are on the bus and 11 more get on at the next stop. How many seats are empty?',
  'Grace picks 17 strawberries, her brother picks twice as many, and her mother picks 8 fewer than her brother. How many strawberries do they pick together?',
  'A factory makes 350 toys a day. How many toys does it make in the month of April?',
  'Olivia spends a quarter of her $60 allowance on a book and $9 on lunch. How much does she have left?',
  'A fence is 96 feet long. Posts are placed every 8 feet, including both ends. How many posts are there?',
].map((q) => `Question: ${q}\nAnswer:`);
